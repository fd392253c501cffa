"""Results of a benchmark repeated in rounds (ROUNDS in scripts/bench.sh and
scripts/bench_http.sh): each result a JSON line with a "round" (1 when
absent), grouped by a key of the caller's choice."""
import json
import statistics

# Figures summed over the rounds rather than taken at their median.
SUMMED = ("errors", "non2xx")


class Rounds:
    def __init__(self, path, key):
        self.cells = {}  # key(result) -> {round: result}
        for line in open(path):
            r = json.loads(line)
            self.cells.setdefault(key(r), {})[r.get("round", 1)] = r

    def __contains__(self, cell):
        return cell in self.cells

    def results(self):
        return [r for rs in self.cells.values() for r in rs.values()]

    def get(self, cell, f):
        """The median over the rounds of one cell's figure f (SUMMED: the sum)."""
        rs = self.cells.get(cell)
        if not rs:
            return None
        xs = [r[f] for r in rs.values()]
        return sum(xs) if f in SUMMED else statistics.median(xs)

    def ratios(self, a, b, f):
        """Per-round ratios of cell a's figure f to cell b's."""
        ra, rb = self.cells.get(a, {}), self.cells.get(b, {})
        return [ra[k][f] / rb[k][f] for k in sorted(ra) if k in rb and rb[k][f]]

    def ratio(self, a, b, f):
        """The median of the per-round ratios: each pairs runs of the same round."""
        xs = self.ratios(a, b, f)
        return statistics.median(xs) if xs else None
