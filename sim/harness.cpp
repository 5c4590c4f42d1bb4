// gatesmith simulated board: a bare Verilator harness that serves the host-link protocol on a
// socket. The host writes request bytes to the socket; each cycle the harness offers the next
// byte on the bridge's rx stream and collects tx bytes, which go back over the socket. While the
// accelerator is idle and no byte is pending, the harness blocks on the socket (no spinning).
//
// It also models device memory behind the accelerator's AXI4 manager port: --mem PATH maps a file
// (shared with the host process: the host's buffers are views of the same pages), --mem-bytes N
// its size, --latency L cycles from a burst request to its first beat, --beat-cycles B cycles
// between beats. Reads and writes share one data bus, as an SDRAM's do: one 32-bit beat per B
// cycles in all, a burst's beats back to back (it holds the bus from its first beat to its
// last), and when a read burst (its latency passed) and a write burst (its W data offered) both
// wait for the bus, they take it in turn. No read-write turnaround is charged. Bursts that cross
// a 4 KiB boundary are answered SLVERR (and counted); addresses past the end DECERR.
//
// usage: simv --fd N [--mem PATH --mem-bytes N --latency L --beat-cycles B]
// On EOF it prints "cycles=<n>" and "mem_4k_violations=<n>" to stderr and exits 0.
//
// SIGUSR1 pulses the design's reset (the board's reset button): the socket and the bytes in
// flight on it are kept, as a UART's are; bursts in flight in the memory model are dropped.
#include "Vsim_top.h"
#include "verilated.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
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

// ---- device memory model --------------------------------------------------------------------
struct Burst {
    uint32_t addr;
    uint32_t beats;
    uint64_t ready_at;
    uint8_t resp;
};

struct Memory {
    uint8_t* data = nullptr;
    uint64_t bytes = 0;
    uint64_t latency = 12;
    uint64_t beat_cycles = 1;
    std::deque<Burst> ar, aw, b;
    uint32_t rbeat = 0, wbeat = 0;
    uint64_t next_beat = 0;  // the data bus is free from this cycle
    int owner = 0;           // the burst holding the bus: 0 none, 1 read, 2 write
    int last = 2;            // the direction served last (reads first at the start)
    int offer = 0;           // the direction offered this cycle
    bool wvalid_seen = false;
    uint64_t violations = 0;

    uint8_t check(uint32_t addr, uint32_t beats) {
        uint64_t end = (uint64_t)addr + 4ull * beats;
        if (((uint64_t)addr >> 12) != ((end - 1) >> 12)) {
            violations++;
            return 2;  // SLVERR: a burst must not cross 4 KiB
        }
        if (end > bytes) return 3;  // DECERR
        return 0;
    }
    uint32_t read32(uint32_t a) const {
        uint32_t v;
        memcpy(&v, data + a, 4);
        return v;
    }
    void write32(uint32_t a, uint32_t v, uint32_t strb) {
        for (int i = 0; i < 4; i++)
            if (strb & (1u << i)) data[a + i] = (uint8_t)(v >> (8 * i));
    }
    bool busy() const { return !ar.empty() || !aw.empty() || !b.empty(); }
    void clear() {
        ar.clear();
        aw.clear();
        b.clear();
        rbeat = wbeat = 0;
        owner = offer = 0;
        last = 2;
    }
};

template <class T>
static void drive_mem(T* top, Memory& mem, uint64_t cycle) {
    top->mem_arready = mem.ar.size() < 8;
    top->mem_awready = mem.aw.size() < 8;
    // the data bus: a burst holding it keeps it; else a waiting read or write takes it, in turn
    // when both wait (WVALID depends on the manager's registers only, never on these inputs)
    bool rc = !mem.ar.empty() && cycle >= mem.ar.front().ready_at;
    bool wc = !mem.aw.empty() && top->mem_wvalid;
    mem.wvalid_seen = top->mem_wvalid;
    int own = mem.owner;
    if (own == 0) own = rc && wc ? 3 - mem.last : rc ? 1 : wc ? 2 : 0;
    mem.offer = cycle >= mem.next_beat ? own : 0;
    top->mem_wready = mem.offer == 2;
    bool r = mem.offer == 1;
    top->mem_rvalid = r;
    top->mem_rid = 0;
    if (r) {
        const Burst& h = mem.ar.front();
        top->mem_rresp = h.resp;
        top->mem_rlast = mem.rbeat + 1 == h.beats;
        top->mem_rdata = h.resp ? 0 : mem.read32(h.addr + 4 * mem.rbeat);
    } else {
        top->mem_rresp = 0;
        top->mem_rlast = 0;
        top->mem_rdata = 0;
    }
    bool bv = !mem.b.empty() && cycle >= mem.b.front().ready_at;
    top->mem_bvalid = bv;
    top->mem_bid = 0;
    top->mem_bresp = bv ? mem.b.front().resp : 0;
}

template <class T>
static void step_mem(T* top, Memory& mem, uint64_t cycle) {
    // called after the falling-edge eval: the handshakes of this cycle are visible
    bool ar_fire = top->mem_arvalid && top->mem_arready;
    bool aw_fire = top->mem_awvalid && top->mem_awready;
    bool w_fire = top->mem_wvalid && top->mem_wready;
    bool r_fire = top->mem_rvalid && top->mem_rready;
    bool b_fire = top->mem_bvalid && top->mem_bready;
    uint32_t araddr = top->mem_araddr, arlen = top->mem_arlen;
    uint32_t awaddr = top->mem_awaddr, awlen = top->mem_awlen;
    uint32_t wdata = top->mem_wdata, wstrb = top->mem_wstrb;
    if ((bool)top->mem_wvalid != mem.wvalid_seen) {
        fprintf(stderr, "harness: WVALID changed with the memory's inputs (cycle %llu)\n",
                (unsigned long long)cycle);
        exit(3);
    }
    if (mem.offer == 1) mem.owner = 1;  // RVALID, once high, stays until taken
    if (r_fire) {
        mem.rbeat++;
        mem.next_beat = cycle + mem.beat_cycles;
        if (mem.rbeat == mem.ar.front().beats) {
            mem.ar.pop_front();
            mem.rbeat = 0;
            mem.owner = 0;
            mem.last = 1;
        }
    }
    if (w_fire) {
        Burst& h = mem.aw.front();
        if (!h.resp) mem.write32(h.addr + 4 * mem.wbeat, wdata, wstrb);
        mem.wbeat++;
        mem.next_beat = cycle + mem.beat_cycles;
        mem.owner = 2;
        if (mem.wbeat == h.beats) {
            mem.b.push_back({0, 0, cycle + mem.latency, h.resp});
            mem.aw.pop_front();
            mem.wbeat = 0;
            mem.owner = 0;
            mem.last = 2;
        }
    }
    if (b_fire) mem.b.pop_front();
    if (ar_fire) mem.ar.push_back({araddr, arlen + 1, cycle + mem.latency, mem.check(araddr, arlen + 1)});
    if (aw_fire) mem.aw.push_back({awaddr, awlen + 1, 0, mem.check(awaddr, awlen + 1)});
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
    Memory mem;
    const char* mem_path = nullptr;
    mem.bytes = 1 << 20;
    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--fd")) g_fd = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--mem")) mem_path = argv[i + 1];
        if (!strcmp(argv[i], "--mem-bytes")) mem.bytes = strtoull(argv[i + 1], nullptr, 0);
        if (!strcmp(argv[i], "--latency")) mem.latency = strtoull(argv[i + 1], nullptr, 0);
        if (!strcmp(argv[i], "--beat-cycles")) mem.beat_cycles = strtoull(argv[i + 1], nullptr, 0);
    }
    if (g_fd < 0) {
        fprintf(stderr, "usage: %s --fd N [--mem PATH --mem-bytes N --latency L --beat-cycles B]\n", argv[0]);
        return 2;
    }
    if (mem_path) {
        int mfd = open(mem_path, O_RDWR);
        if (mfd < 0) {
            perror("device memory file");
            return 2;
        }
        void* p = mmap(nullptr, mem.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
        close(mfd);
        if (p == MAP_FAILED) {
            perror("mmap of device memory");
            return 2;
        }
        mem.data = (uint8_t*)p;
    } else {
        mem.data = (uint8_t*)calloc(mem.bytes, 1);
    }
    if (mem.beat_cycles < 1) mem.beat_cycles = 1;
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
            mem.clear();
        }
        if (in.empty() && top->idle && !top->tx_valid && !mem.busy()) {
            if (!flush_out(out)) break;
            open = pull_in(in, true);
            if (!open) break;
        } else if ((cycles & 1023) == 0) {
            if (!out.empty() && !flush_out(out)) break;
            open = pull_in(in, false);
        }
        top->rx_valid = !in.empty();
        top->rx_data = in.empty() ? 0 : in.front();
        drive_mem(top, mem, cycles);
        top->clk = 0;
        top->eval();
        step_mem(top, mem, cycles);
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
    fprintf(stderr, "mem_4k_violations=%llu\n", (unsigned long long)mem.violations);
    top->final();
    delete top;
    delete ctx;
    return 0;
}
