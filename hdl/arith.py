"""Small arithmetic helpers shared by the engines."""

__all__ = ["adder_tree"]


def adder_tree(terms):
    """Balanced combinational adder tree over Amaranth values (log2(n) adders deep)."""
    terms = list(terms)
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]
