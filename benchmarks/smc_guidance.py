"""One page for issue 19's measurements: docs/benchmarks/smc_guidance.md, assembled from the parts'
benchmark pages (each made by its own script, whose command and machine it states):

* docs/benchmarks/smc_fkc.md        -- Feynman-Kac correctors (benchmarks/smc_fkc.py)
* docs/benchmarks/smc_posterior.md  -- DPS and twisted SMC posterior sampling (benchmarks/smc_posterior.py)
* docs/benchmarks/guidance.md       -- minority guidance and autoguidance (benchmarks/guidance.py)

    python -m benchmarks.smc_guidance            # re-assemble (no sampling: seconds)

Each part keeps its own page; this one copies their tables under one heading each (headings
shifted one level down) after the summary written by hand in SUMMARY below, so the error-to-
exact-target tables of every method, corrected and uncorrected, sit in one place.
"""
from __future__ import annotations

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(os.path.dirname(HERE), "docs", "benchmarks")
OUT = os.path.join(DOCS, "smc_guidance.md")
PARTS = (
    ("Feynman–Kac correctors (annealing, product of experts, CFG target)", "smc_fkc.md", "benchmarks/smc_fkc.py"),
    ("Posterior sampling: DPS and twisted SMC against the exact posterior", "smc_posterior.md",
     "benchmarks/smc_posterior.py"),
    ("Minority guidance and autoguidance", "guidance.md", "benchmarks/guidance.py"),
)
SUMMARY = os.path.join(HERE, "smc_guidance_summary.md")


def _shift(md: str) -> str:
    """Demote every markdown heading one level (the part's title becomes a section)."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", md, flags=re.M)


def assemble() -> str:
    out = ["# Sampling other targets: SMC, Feynman–Kac correctors, posterior sampling, minority "
           "guidance, autoguidance", "",
           "Assembled by `python -m benchmarks.smc_guidance` from the parts' pages; every table below "
           "names the command and machine that produced it.", ""]
    if os.path.exists(SUMMARY):
        with open(SUMMARY) as f:
            out += [f.read().rstrip(), ""]
    for title, name, script in PARTS:
        path = os.path.join(DOCS, name)
        out += [f"## {title}", "", f"From [`{name}`]({name}) (`python -m {script[:-3].replace('/', '.')}`).", ""]
        if not os.path.exists(path):
            out += [f"*Not measured yet: run `python -m {script[:-3].replace('/', '.')}`.*", ""]
            continue
        with open(path) as f:
            body = f.read()
        body = body.split("\n", 1)[1] if body.startswith("# ") else body  # the part's own title
        out += [_shift(body).strip(), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    md = assemble()
    tmp = OUT + ".tmp"
    with open(tmp, "w") as f:
        f.write(md)
    os.replace(tmp, OUT)
    print(md[:2000])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
