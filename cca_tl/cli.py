"""``cca-tl``: the command line door to the same functions notebooks call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cca_tl.errors import CCAError


def _cmd_components(args: argparse.Namespace) -> int:
    """Load a model and print (and optionally write) its component table."""
    import resource

    from cca_tl.components import ComponentRegistry
    from cca_tl.models import load_model

    start = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - start
    reg = ComponentRegistry.from_model(model)
    summary = reg.summary(args.weights)
    per_layer = reg.table()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    arch = model.cfg.original_architecture or "pure TransformerLens"
    print(f"{reg.identity.name} ({arch}): {reg.n_layers} layers, {reg.total_model_params:,} parameters; "
          f"loaded in {load_s:.1f} s, peak RSS {peak_mb:,.0f} MB\n")
    print(f"Maskable components ({args.weights} weight set):")
    print(summary.to_string())
    print("\nPer layer:")
    print(per_layer.to_string())
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(out / "components_summary.csv")
        per_layer.to_csv(out / "components_per_layer.csv")
        (out / "components.md").write_text(
            f"# Components of {reg.identity.name}\n\n{summary.to_markdown()}\n\n{per_layer.to_markdown()}\n"
        )
        print(f"\nwrote {out}/components_summary.csv, components_per_layer.csv, components.md")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Load a model and write it as a verified HF directory."""
    from cca_tl.export import export_hf
    from cca_tl.models import load_model

    model = load_model(args.model)
    report = export_hf(model, args.out, overwrite=args.overwrite)
    print(json.dumps(report.to_dict(), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cca-tl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("components", help="print a model's component table (the main job for now)")
    p.add_argument("--model", default="gemma-3-270m", help="model name, .gguf file or HF directory")
    p.add_argument("--weights", choices=("authors", "extended"), default="authors",
                   help="which weight set belongs to a component (SPEC A4)")
    p.add_argument("--out", help="directory to write CSV and markdown tables to")
    p.set_defaults(func=_cmd_components)

    p = sub.add_parser("export", help="write a model as a HuggingFace directory and verify the round trip")
    p.add_argument("model", help="model name, .gguf file or HF directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CCAError, FileExistsError) as exc:
        print(f"cca-tl: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
