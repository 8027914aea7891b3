"""The BENCHMARKS.md writer: the machine, the targets at a glance, then each section's own rendering."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .harness import Config, machine_lines


def report_summary(results: dict[str, Any], sections: dict[str, ModuleType]) -> list[str]:
    """The targets, one row each, from whichever sections were measured (each section's ``targets``)."""
    rows: list[str] = []
    for name, module in sections.items():
        if name in results:
            rows += module.targets(results[name], results)
    if not rows:
        return []
    gpu = results.get("machine", {}).get("cuda_available")
    return (["## Targets at a glance", "", "| target | goal | measured | |", "| --- | --- | --- | --- |"] + rows
            + ([] if gpu else ["| GPU: ≥20x the loop, ≥5000x realtime HuBERT-base, ≥1500 face frames/s | | "
                               "no GPU lent | not measured |"])
            + ["", "Each section below says what bounds a missed target.", ""])


def provenance(section: dict[str, Any], results: dict[str, Any]) -> str:
    """Which run measured a section (sections can be re-run alone with --only)."""
    gemm = section.get("matmul_gflops")
    return (f"*Measured {section.get('finished', results.get('finished', '?'))} by "
            f"`{section.get('command', results.get('command', 'python scripts/benchmark.py'))}`"
            + (f"; fp32 GEMM {gemm} GFLOP/s at the section's start" if gemm else "") + ".*")


def report(results: dict[str, Any], cfg: Config, command: str, sections: dict[str, ModuleType]) -> str:
    """BENCHMARKS.md from ``results``; ``sections`` maps a section's name to its module (``render``, ``targets``)."""
    m = results["machine"]
    gpu = m.get("cuda_available")
    out = ["# Benchmarks", "",
           f"Written by `scripts/benchmark.py` ({'quick smoke run — small sizes, not the reference figures' if cfg.quick else 'full sizes'}); "
           f"last run `{command}` on {results.get('finished', '?')}. Each section says which run measured it "
           "(`--only` re-runs sections and keeps the others); the raw numbers are in `benchmarks/results.json`.", "",
           "## Machine", ""]
    out += [f"- {line}" for line in machine_lines(m)]
    out.append(f"- load average at the end: {m.get('load_average_end')} "
               "(the machine is shared with other jobs: each section below records its own)")
    if not gpu:
        out.append("- **No GPU**: none was lent to the task that produced these figures, so every figure is on "
                   "the CPU and the GPU targets (≥20x the per-clip loop, 5000x realtime for HuBERT-base, "
                   "1500 face frames/s) are not measured. The script has the GPU code paths (device "
                   "selection, pinned memory, bf16/fp16 autocast as `extract` resolves it): run "
                   "`python scripts/benchmark.py --device cuda` on a GPU machine.")
    out.append("- **Random weights**: HuBERT-base and facenet (InceptionResnetV1, VGGFace2) run with random "
               "weights of the same architecture (the pretrained files cannot be downloaded here); the compute "
               "is the same. MTCNN uses its real weights (they ship with facenet-pytorch).")
    out.append("")
    out += report_summary(results, sections)
    for name, module in sections.items():
        if name in results:
            lines = module.render(results[name], results)
            lines[2:2] = [provenance(results[name], results), ""]
            out += lines
    out += ["## How to run", "",
            "```bash",
            "python scripts/benchmark.py                       # everything (full sizes), writes this file",
            "python scripts/benchmark.py --quick               # smoke run, ~2 min, writes runs/benchmark-quick/",
            "python scripts/benchmark.py --only extraction,training   # some sections (others kept from the JSON)",
            "python scripts/benchmark.py --only extraction --extractors hubert_base   # one extractor's rows",
            "python scripts/benchmark.py --device cuda         # on a GPU machine",
            "python scripts/benchmark.py --wait-load 1.5       # wait for a quiet machine first",
            "```", "",
            "The sections live in `scripts/bench/` (one module each: `run`, `render`, `targets`) over a shared "
            "harness (`harness.py`: sizes, machine, medians, load waiting; `report.py`: this file).", ""]
    return "\n".join(out)
