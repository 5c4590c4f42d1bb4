// gatesmith simulated board: a bare Verilator harness that serves the host-link protocol on a
// socket. The host writes request bytes to the socket; each cycle the harness offers the next
// byte on the bridge's rx stream and collects tx bytes, which go back over the socket. While the
// accelerator is idle and no byte is pending, the harness blocks on the socket (no spinning).
//
// usage: simv --fd N            (N: a connected stream socket inherited from the host)
// On EOF it prints "cycles=<n>" to stderr and exits 0. SIGUSR1 pulses the design's reset (the
// board's reset button): the socket and the bytes in flight on it are kept, as a UART's are.
#include "Vsim_top.h"
#include "verilated.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <csignal>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

static int g_fd = -1;
static volatile sig_atomic_t g_reset = 0;

static void on_usr1(int) { g_reset = 1; }

static void pulse_reset(Vsim_top* top) {
    top->rst = 1;
    for (int i = 0; i < 4; i++) {
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
    }
    top->rst = 0;
}

static bool flush_out(std::vector<uint8_t>& out) {
    size_t off = 0;
    while (off < out.size()) {
        ssize_t n = send(g_fd, out.data() + off, out.size() - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        off += (size_t)n;
    }
    out.clear();
    return true;
}

// Returns false on EOF/error.
static bool pull_in(std::deque<uint8_t>& in, bool block) {
    uint8_t buf[65536];
    for (;;) {
        if (block) {
            struct pollfd p = {g_fd, POLLIN, 0};
            int r = poll(&p, 1, -1);
            if (r < 0 && errno == EINTR) {
                if (g_reset) return true;  // run the loop once: it applies the reset
                continue;
            }
        }
        ssize_t n = recv(g_fd, buf, sizeof buf, block ? 0 : MSG_DONTWAIT);
        if (n > 0) {
            in.insert(in.end(), buf, buf + n);
            return true;
        }
        if (n == 0) return false;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
        return false;
    }
}

int main(int argc, char** argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--fd")) g_fd = atoi(argv[i + 1]);
    if (g_fd < 0) {
        fprintf(stderr, "usage: %s --fd N\n", argv[0]);
        return 2;
    }
    VerilatedContext* ctx = new VerilatedContext;
    ctx->commandArgs(argc, argv);
    Vsim_top* top = new Vsim_top{ctx};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;  // no SA_RESTART: a blocking poll() returns EINTR
    sigaction(SIGUSR1, &sa, nullptr);
    top->clk = 0;
    top->tx_ready = 1;
    pulse_reset(top);

    std::deque<uint8_t> in;
    std::vector<uint8_t> out;
    uint64_t cycles = 0;
    bool open = true;
    while (open) {
        if (g_reset) {
            g_reset = 0;
            pulse_reset(top);
            cycles += 4;
        }
        if (in.empty() && top->idle && !top->tx_valid) {
            if (!flush_out(out)) break;
            open = pull_in(in, true);
            if (!open) break;
        } else if ((cycles & 1023) == 0) {
            if (!out.empty() && !flush_out(out)) break;
            open = pull_in(in, false);
        }
        top->rx_valid = !in.empty();
        top->rx_data = in.empty() ? 0 : in.front();
        top->clk = 0;
        top->eval();
        bool rx_fire = top->rx_valid && top->rx_ready;
        bool tx_fire = top->tx_valid && top->tx_ready;
        uint8_t tx_byte = top->tx_data;
        top->clk = 1;
        top->eval();
        cycles++;
        if (rx_fire) in.pop_front();
        if (tx_fire) {
            out.push_back(tx_byte);
            if (out.size() >= 65536 && !flush_out(out)) break;
        }
    }
    flush_out(out);
    fprintf(stderr, "cycles=%llu\n", (unsigned long long)cycles);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
