"""The ``lvmqa`` command line. Errors are one line on stderr; ``--debug`` shows tracebacks.

Exit codes: 0 all checks passed, 1 a check failed, 2 usage, registry or format error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lvmqa import __version__
from lvmqa.errors import CheckSkipped, LvmqaError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
QUALITY_TESTS = Path(__file__).resolve().parent.parent / "quality_tests"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvmqa",
        description="Data-quality checks for LVM training data.",
        epilog="example: lvmqa check wiki-790k --html reports/wiki-790k.html",
    )
    parser.add_argument("--version", action="version", version=f"lvmqa {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument(
        "--lvmqa-config",
        metavar="FILE",
        help="dataset registry (default: $LVMQA_CONFIG or ./lvmqa.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example: {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    check = command(
        "check",
        "run every check on datasets and print the verdict",
        "lvmqa check wiki-790k --json reports/wiki-790k.json",
    )
    check.add_argument("datasets", nargs="+", metavar="DATASET", help="registry name or path")
    check.add_argument("--baseline", help="dataset to compare distributions against")
    check.add_argument("--encoder", help="encoder name for fingerprint/alignment")
    check.add_argument("--json", dest="json_path", metavar="FILE", help="write JSON results")
    check.add_argument("--html", metavar="FILE", help="write the self-contained HTML report")
    check.add_argument("--junitxml", metavar="FILE", help="write JUnit XML")
    check.add_argument("--no-smoke", action="store_true", help="skip the smoke training")
    _trust_flags(check)

    filt = command(
        "filter",
        "write a quality mask, the filtered dataset and a manifest",
        "lvmqa filter wiki-790k --min-coherence 0.35 --out filtered/wiki-790k",
    )
    filt.add_argument("dataset", metavar="DATASET", help="registry name or path")
    filt.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output prefix: writes PREFIX.npz, PREFIX.mask.npy, PREFIX.manifest.json",
    )
    filt.add_argument(
        "--min-coherence",
        type=float,
        default=0.35,
        help="drop rows whose coherence score is below this (default 0.35)",
    )
    filt.add_argument(
        "--blocklist",
        default=None,
        help="regex of texts/titles to drop (default: 'List of|Disambiguation|"
        "Category:'; pass '' to disable)",
    )
    filt.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="drop exact duplicate targets after their first occurrence",
    )
    filt.add_argument(
        "--drop-low-quality",
        action="store_true",
        help="drop the articles text_quality flags as low-quality pages from the data "
        "(compared with the registry baseline's articles, else the dataset's own)",
    )
    filt.add_argument("--force", action="store_true", help="replace existing outputs")

    win = command(
        "windows",
        "rebuild sequences from a bank inside each article, in chunk order",
        "lvmqa windows fixtures/data/wiki-790k.bank.npz --context 5 "
        "--blocklist 'List of|disambiguation' --out rebuilt.npz",
    )
    win.add_argument("bank", type=Path, help="bank file (vectors + article/chunk ids)")
    win.add_argument("--out", required=True, type=Path, help="output sequences .npz")
    win.add_argument("--context", type=int, default=5, help="context length (default 5)")
    win.add_argument(
        "--blocklist",
        default=None,
        help="regex: drop bank rows whose text or article title matches",
    )
    win.add_argument("--min-chars", type=int, default=0, help="drop chunks shorter than this")
    win.add_argument(
        "--layout",
        default="per-sequence",
        choices=["per-sequence", "origin-790k"],
        help="output key layout (default: per-sequence metadata)",
    )
    win.add_argument("--force", action="store_true", help="replace an existing output")

    fp = command(
        "fingerprint",
        "print the encoder fingerprint to pin in lvmqa.toml",
        "lvmqa fingerprint minilm",
    )
    fp.add_argument("encoder", help="registry encoder name or model name")
    _trust_flags(fp)

    rep = command(
        "report",
        "render the diagnosis from a results JSON",
        "lvmqa report reports/wiki-790k.json --format md --out pr-comment.md",
    )
    rep.add_argument("results", type=Path, help="JSON written by --lvmqa-json / check --json")
    rep.add_argument(
        "--format",
        choices=["html", "md"],
        default=None,
        help="output format (default: from --out's suffix, else md)",
    )
    rep.add_argument("--out", type=Path, help="output file (default: stdout)")

    listing = command(
        "datasets",
        "list the registry: paths, sizes, baselines and splits",
        "lvmqa datasets --changed-from base-lvmqa.toml",
    )
    listing.add_argument(
        "--changed-from",
        metavar="TOML",
        type=Path,
        help="print only the names of datasets added or changed relative to "
        "this older registry (for CI gating of pull requests)",
    )
    listing.add_argument(
        "--json",
        dest="as_json",
        action="store_true",
        help="with --changed-from: print the names as one JSON array (for CI steps, which "
        "must read names as data, never paste them into a shell line)",
    )
    return parser


def _trust_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--trust-registry",
        dest="trust_registry",
        action="store_true",
        default=None,
        help="allow module:function encoders from the registry (never for a PR's checkout; "
        "also $LVMQA_TRUST_REGISTRY=1)",
    )
    command.add_argument(
        "--no-trust-registry",
        dest="trust_registry",
        action="store_false",
        help="treat the registry as untrusted even if $LVMQA_TRUST_REGISTRY is set",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from lvmqa import progress

    progress.set_sink(progress.stderr_sink())
    try:
        return int(_dispatch(args))
    except LvmqaError as exc:
        if args.debug:
            raise
        print(f"lvmqa: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckSkipped as exc:  # e.g. fingerprint of an encoder that cannot be loaded
        if args.debug:
            raise
        print(f"lvmqa: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, RecursionError) as exc:  # hostile input past every budget
        if args.debug:
            raise
        print(f"lvmqa: error: input too large or too deep ({type(exc).__name__})", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lvmqa: interrupted", file=sys.stderr)
        return 130


def _registry(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from lvmqa.registry import find_config, load_registry, trust_granted

    # Trust comes only from the flag or $LVMQA_TRUST_REGISTRY, never from where the
    # registry lies: a pull request's checkout has an lvmqa.toml of its author's choosing.
    path = find_config(args.lvmqa_config)
    return load_registry(path, trusted=trust_granted(getattr(args, "trust_registry", None)))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check":
        return _check(args)
    if args.command == "filter":
        return _filter(args)
    if args.command == "windows":
        from lvmqa.outputs import refuse_overwrite_of_inputs
        from lvmqa.windows import build_sequences

        refuse_overwrite_of_inputs([args.out], [args.bank], option="--out")
        out = build_sequences(
            args.bank,
            args.out,
            context=args.context,
            windows="article",
            layout=args.layout,
            blocklist=args.blocklist,
            min_chars=args.min_chars,
            force=args.force,
        )
        print(f"wrote {out}")
        return EXIT_OK
    if args.command == "fingerprint":
        return _fingerprint(args)
    if args.command == "report":
        return _report(args)
    if args.command == "datasets":
        return _datasets(args)
    raise AssertionError(args.command)


def _check(args: argparse.Namespace) -> int:
    import pytest

    from lvmqa.outputs import refuse_unwritable

    # pytest-html writes its report itself: a folder it cannot write is refused here, in
    # one line. Outputs that are inputs are refused by the plugin, which knows the paths.
    refuse_unwritable([args.json_path, args.html, args.junitxml], option="report")
    argv = [
        str(QUALITY_TESTS),
        "-p",
        "lvmqa.plugin",
        "-q",
        "--no-header",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(Path.cwd()),
    ]
    for name in args.datasets:
        argv.append(f"--dataset={name}")
    for flag, value in (
        ("--baseline", args.baseline),
        ("--encoder", args.encoder),
        ("--lvmqa-json", args.json_path),
        ("--junitxml", args.junitxml),
        ("--lvmqa-config", args.lvmqa_config),
    ):
        if value:
            argv.append(f"{flag}={value}")
    if args.html:
        argv += [f"--html={args.html}", "--self-contained-html"]
    if args.no_smoke:
        argv += ["-m", "not smoke"]
    if args.trust_registry is not None:
        argv.append("--trust-registry" if args.trust_registry else "--no-trust-registry")
    if args.debug:
        argv.append("--lvmqa-debug")
    code = pytest.main(argv)
    return {0: EXIT_OK, 1: EXIT_FAILED}.get(int(code), EXIT_USAGE)


def _filter(args: argparse.Namespace) -> int:
    from lvmqa.checks import Session
    from lvmqa.filtering import DEFAULT_BLOCKLIST, filter_dataset
    from lvmqa.outputs import refuse_overwrite_of_inputs

    session = Session(_registry(args))
    entry = session.registry.dataset(args.dataset)
    path = session.data_path(entry)
    prefix = Path(args.out)
    outputs = [
        prefix.with_name(prefix.name + suffix) for suffix in (".npz", ".mask.npy", ".manifest.json")
    ]
    sources = [path] + (
        [session.data_path(session.registry.dataset(entry.source))] if entry.source else []
    )
    refuse_overwrite_of_inputs([prefix, *outputs], sources, option="--out")
    # With the source bank, rows are scored in article order instead of file order.
    source = session.context(entry.source).dataset if entry.source else None
    blocklist = DEFAULT_BLOCKLIST if args.blocklist is None else (args.blocklist or None)
    min_coherence = None if args.min_coherence < -1 else args.min_coherence
    drop_rows = None
    if args.drop_low_quality:
        from lvmqa.lowquality import low_quality_row_mask

        drop_rows = low_quality_row_mask(session.context(entry.name))
    manifest = filter_dataset(
        path,
        args.out,
        min_coherence=min_coherence,
        blocklist=blocklist,
        drop_duplicates=args.drop_duplicates,
        source=source,
        force=args.force,
        drop_rows=drop_rows,
    )
    counts = manifest.counts
    print(
        f"kept {counts['kept']} of {counts['input']} sequences; dropped by reason: "
        + ", ".join(f"{k} {v}" for k, v in manifest.dropped_by_primary_reason.items() if v)
    )
    print(f"wrote {manifest.paths.dataset}, {manifest.paths.mask}, {manifest.paths.manifest}")
    print(f"next: pytest quality_tests --dataset={manifest.paths.dataset}")
    return EXIT_OK


def _fingerprint(args: argparse.Namespace) -> int:
    from lvmqa.encoders import fingerprint, load_encoder

    registry = _registry(args)
    entry = registry.encoder(args.encoder)
    encoder = load_encoder(entry.model, trusted=registry.trusted, base_dir=registry.folder)
    result = fingerprint(encoder)
    print(result["fingerprint"])
    for module in encoder.describe():
        print(f"  {module}", file=sys.stderr)
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from lvmqa.atomic import write_text_atomic
    from lvmqa.outputs import refuse_overwrite_of_inputs
    from lvmqa.report import load_results, render_html, render_markdown

    refuse_overwrite_of_inputs([args.out], [args.results], option="--out")
    results = load_results(args.results)
    fmt = args.format or ("html" if args.out and args.out.suffix in (".html", ".htm") else "md")
    text = render_markdown(results) if fmt == "md" else render_html(results)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _datasets(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.changed_from is not None:
        names = changed_datasets(registry.path, args.changed_from)
        if args.as_json:
            import json

            print(json.dumps(names))
        else:
            for name in names:
                print(name)
        return EXIT_OK
    print(f"registry: {registry.path}")
    for name, entry in registry.datasets.items():
        if entry.build is not None:
            where = f"built from {entry.build.source.name} ({entry.build.windows} windows)"
            size_path = entry.build.source
        else:
            assert entry.path is not None
            where, size_path = str(entry.path), entry.path
        size = f"{size_path.stat().st_size / 1e6:.1f} MB" if size_path.exists() else "missing"
        related = ", ".join(
            f"{role}={getattr(entry, role)}"
            for role in ("baseline", "source", "val", "ood")
            if getattr(entry, role)
        )
        print(f"{name:16} {size:>10}  {where}" + (f"  [{related}]" if related else ""))
    return EXIT_OK


def changed_datasets(current: Path | None, previous: Path) -> list[str]:
    """Datasets whose registry entry is new or differs from ``previous`` (a TOML file).

    Entries are compared as parsed tables, so reformatting the file changes nothing.
    """
    import tomllib

    from lvmqa.errors import RegistryError

    def tables(path: Path | None) -> dict[str, object]:
        if path is None or not path.exists():
            return {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"invalid TOML: {exc}", path=path) from None
        value = data.get("datasets", {})
        return value if isinstance(value, dict) else {}

    old, new = tables(previous), tables(current)
    return [name for name, body in new.items() if old.get(name) != body]


if __name__ == "__main__":
    sys.exit(main())
