"""Run records and paired statistics: the evidence behind every table.

A record is one finished training run in a few hundred bytes -- the commit it ran at, its config (file, overrides and a
hash of the recipe), variant, seed, the split it was evaluated on and its metrics at both variants' test thresholds --
small enough to commit, so that tables are generated from records instead of typed, and a reviewer can check any
number against its record and rerun its command.

Comparisons are paired by seed: seed ``s`` of the baseline and of sampling-free share the data order and the
initialisation of everything the variants share, so the per-seed difference removes most of the seed's luck. A
difference is reported with its mean and a 95 % Student-t interval (df = n - 1): "ahead" when the interval lies
above 0, "behind" when below, "level" when it contains 0.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import platform
import re
import shlex
import statistics
import subprocess
from pathlib import Path

from .config import ALL_KEYS, config_items

PACKAGE = Path(__file__).resolve().parent
# Keys that say where a run writes, which seed it drew or which split it was scored on -- not what was trained.
NOT_RECIPE = ("OUTPUT_DIR", "SEED", "DATASETS.TEST")
FAMILY_MODULES = {"RetinaNet": "retinanet", "FCOS": "fcos", "ATSS": "atss", "PAA": "paa", "SSD": "ssd",
                  "GeneralizedRCNN": "rcnn", "CascadeRCNN": "cascade"}

ARCHITECTURE_OF = {"retinanet": "RetinaNet", "fcos": "FCOS", "atss": "ATSS", "paa": "PAA", "ssd": "SSD", "faster_rcnn": "GeneralizedRCNN",
                   "mask_rcnn": "GeneralizedRCNN", "cascade_rcnn": "CascadeRCNN", "cascade_mask_rcnn": "CascadeRCNN"}


def family_of(cfg) -> str:
    """``retinanet``, ``fcos``, ``atss``, ``ssd``, ``faster_rcnn``, ``mask_rcnn``, ``cascade_rcnn`` (with masks:
    ``cascade_mask_rcnn``)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "GeneralizedRCNN":
        return "mask_rcnn" if cfg.MODEL.MASK_ON else "faster_rcnn"
    if arch == "CascadeRCNN":
        return "cascade_mask_rcnn" if cfg.MODEL.MASK_ON else "cascade_rcnn"
    return FAMILY_MODULES[arch]


def recipe_values(cfg) -> dict:
    """The config's values that differ from the schema defaults, less where it writes, its seed and its test split:
    what was trained. Adding a new key with a default leaves it unchanged; changing a default changes it."""
    return {k: v for k, v in config_items(cfg) if k not in NOT_RECIPE and v != ALL_KEYS[k].default}


def config_hash(cfg) -> str:
    return hashlib.sha256(json.dumps(recipe_values(cfg), sort_keys=True).encode()).hexdigest()[:12]


def code_files(architecture: str) -> list[str]:
    """The family's code, relative to the repository: its module under ``modeling/`` and every module of
    ``modeling/`` and ``mechanism.py`` it imports, followed transitively. A change to any of them can change what
    the family trains; the trainer, data and evaluation are shared by all families and not counted."""
    todo, seen = [PACKAGE / "modeling" / f"{FAMILY_MODULES[architecture]}.py"], set()
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        package = path.parent
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.parents[node.level - 2] if node.level > 1 else package
                # "from .x import y" names module x; "from . import x" names module x itself
                names = [node.module] if node.module else [alias.name for alias in node.names]
                for name in names:
                    target = base.joinpath(*name.split(".")).with_suffix(".py")
                    if target == PACKAGE / "mechanism.py" or target.parent == PACKAGE / "modeling":
                        todo.append(target)
    return sorted(str(p.relative_to(PACKAGE.parent)) for p in seen)


def git(*args: str, cwd: str | Path = PACKAGE) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def source_commit() -> tuple[str, bool]:
    """(HEAD of the checkout this package runs from, whether its tracked files differ from HEAD); ("", True)
    outside a git checkout. A run from a dirty tree is recorded as such and cannot feed a table."""
    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "", True


def machine() -> str:
    import torch

    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def note_source(run_dir: str | Path, iteration: int) -> None:
    """Append to ``run_dir/source.json`` the commit, tree state and machine this process trains with from
    ``iteration`` on (a resumed run can span commits: each start is kept)."""
    from .files import write_json_atomic

    path = Path(run_dir) / "source.json"
    starts = json.loads(path.read_text())["starts"] if path.exists() else []
    commit, dirty = source_commit()
    starts.append({"iteration": iteration, "commit": commit, "dirty": dirty, "machine": machine()})
    write_json_atomic(path, {"starts": starts})


def read_source(run_dir: str | Path) -> dict:
    """The commit a run trained at: dirty when unknown, when any start was dirty, or when it spans commits."""
    path = Path(run_dir) / "source.json"
    if not path.exists():
        return {"commit": "", "dirty": True, "machine": ""}
    starts = json.loads(path.read_text())["starts"]
    commits = {s["commit"] for s in starts}
    return {"commit": starts[0]["commit"], "dirty": len(commits) > 1 or any(s["dirty"] for s in starts),
            "machine": starts[0]["machine"]}


def command_of(record: dict) -> str:
    """The shell command that reruns a record's run (``sampling-free compare`` of its one variant and seed)."""
    scoped = [f"{record['variant']}:{x}" if i % 2 == 0 else x for i, x in enumerate(record["variant_overrides"])]
    words = ["sampling-free", "compare", "--config-file", record["config_file"], "--seeds", str(record["seed"]),
             "--variants", record["variant"], *record["overrides"], *scoped]
    return " ".join(_quoted(w) for w in words)


def _quoted(word: str) -> str:
    """A shell word as a person would type it: bare when safe, "in double quotes" for a Python list."""
    if re.fullmatch(r"[\w.:/=,+@%-]+", word):
        return word
    return f'"{word}"' if not re.search(r'["$`\\!]', word) else shlex.quote(word)


def record_path(folder: str | Path, split: str, variant: str, slug: str, seed: int) -> Path:
    return Path(folder) / split.replace("/", "_").replace(":", "_") / f"{variant}{'_' + slug if slug else ''}_seed{seed}.json"


def slug_of(values: dict) -> str:
    """A short file-name-safe label of variant-specific overrides: {"MODEL.FCOS.FOCAL_LOSS_GAMMA": 1.0} ->
    ``FOCAL_LOSS_GAMMA-1.0``; a list value ``[1350, 1650]`` -> ``1350+1650`` (no brackets or spaces in paths)."""
    def safe(value) -> str:
        return re.sub(r"[^\w.+-]", "", str(value).replace("/", "-").replace(",", "+"))
    return "_".join(f"{k.rsplit('.', 1)[-1]}-{safe(v)}" for k, v in sorted(values.items()))


def read_records(folder: str | Path) -> list[dict]:
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        record = json.loads(path.read_text())
        record["path"] = str(path)
        records.append(record)
    return records


# ---- paired statistics ---------------------------------------------------------------------------------------


def _t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t, x >= 0, by Simpson's rule on the density from 0 (accurate to ~1e-9 here)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    n = 4000
    h = x / n
    total = density(0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, n))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p in [0.5, 1)), by bisection on its CDF."""
    if not 0.5 <= p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(treated: dict[int, float], control: dict[int, float], *, confidence: float = 0.95) -> dict:
    """``treated - control`` over the seeds both have: per seed, mean, sd, the t-interval and the verdict."""
    seeds = sorted(set(treated) & set(control))
    diffs = [treated[s] - control[s] for s in seeds]
    out = {"seeds": seeds, "per_seed": diffs, "n": len(diffs)}
    if not diffs:
        return {**out, "mean": math.nan, "sd": math.nan, "low": math.nan, "high": math.nan, "verdict": "no pairs"}
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {**out, "mean": mean, "sd": math.nan, "low": math.nan, "high": math.nan, "verdict": "one seed"}
    sd = statistics.stdev(diffs)
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    low, high = mean - half, mean + half
    verdict = "ahead" if low > 0 else "behind" if high < 0 else "level"
    return {**out, "mean": mean, "sd": sd, "low": low, "high": high, "verdict": verdict}


def format_difference(d: dict, digits: int = 1) -> str:
    """``+1.6 [+0.4, +2.8]`` (mean and 95 % interval; ``-0.7 [-1.5, -0.04]`` where a bound is near 0)."""
    if math.isnan(d["mean"]):
        return "—"
    def signed(x):  # a bound that rounds to 0 gets one more digit: its sign is the verdict
        return f"{x:+.{digits + 1}f}" if round(x, digits) == 0 and x != 0 else f"{x:+.{digits}f}"

    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f}"
    return f"{d['mean']:+.{digits}f} [{signed(d['low'])}, {signed(d['high'])}]"


# ---- whether a record still describes the code ----------------------------------------------------------------


def _is_ancestor(old: str, new: str, repo: Path) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", old, new], cwd=repo,
                          capture_output=True).returncode == 0


def _same_code(a: str, b: str, files: list[str], repo: Path) -> bool:
    """Whether the family's code files are byte for byte the same at commits ``a`` and ``b``, so a run at either
    trained the same code."""
    return a == b or subprocess.run(["git", "diff", "--quiet", a, b, "--", *files], cwd=repo,
                                    capture_output=True).returncode == 0


def _same_scores(a: dict, b: dict) -> bool:
    return {t: a.get(t) for t in ("bbox", "segm")} == {t: b.get(t) for t in ("bbox", "segm")}


def currency(record: dict, all_records: list[dict], repo: Path) -> tuple[str, str]:
    """("current" | "carried" | "stale" | "dirty", why) for a record, against the checkout at ``repo``.

    Current: no file of its family's code (``code_files``) changed after the commit it ran at. Carried: the code
    changed since, but the same recipe re-run at a commit with the change -- a *witness*, any record with the same
    config hash and seed at a later commit -- measured exactly the same metrics as its twin from before the change, so
    the change did not change what that recipe trains (a refactor). The twin may sit at another commit than the
    record as long as the family's code files are identical at both (records made at several commits of unchanged
    code need one witness, not one each). Otherwise stale: re-run it."""
    if record.get("dirty") or not record.get("commit"):
        return "dirty", "trained from a tree with uncommitted changes (or outside git)"
    files = code_files(ARCHITECTURE_OF[record["family"]])
    last = git("log", "-1", "--format=%H", "--", *files, cwd=repo)
    if not last or _is_ancestor(last, record["commit"], repo):
        return "current", ""
    for w in all_records:
        if (w is not record and w["config_hash"] == record["config_hash"] and w.get("commit") and not w.get("dirty")
                and _is_ancestor(last, w["commit"], repo)):
            twin = [r for r in all_records if r["config_hash"] == record["config_hash"] and r["seed"] == w["seed"]
                    and r.get("commit") and not r.get("dirty") and not _is_ancestor(last, r["commit"], repo)
                    and r.get("split") == w.get("split") and _same_code(r["commit"], record["commit"], files, repo)]
            if twin and all(_same_scores(t["metrics"], w["metrics"]) for t in twin):
                return "carried", f"re-run at {w['commit'][:7]} (seed {w['seed']}) gave identical metrics"
    return "stale", f"{', '.join(files)} changed at {last[:7]}, after the record's commit {record['commit'][:7]}"
