"""``featharm info``: what a model file holds (family, options, formula, sites and sizes, features, the
featharm that wrote it, warnings and missing values at fit), read with the safe loader."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("info", help="print what a saved model holds",
                       description="Print what a model file (featharm harmonize --save-model) holds: family, "
                                   "options, formula, sites and their sizes, features, the featharm version that "
                                   "wrote it, warnings recorded at fit and missing values at fit. The file is "
                                   "checked completely before anything is printed.")
    i.add_argument("model", metavar="MODEL", help="model file")
    i.add_argument("--features", action="store_true", help="list every feature, one per line, after the summary")
    i.add_argument("--methods", action="store_true",
                   help="print instead a methods paragraph for a paper (featharm version, model and every option, "
                        "formula, numbers of sites, subjects and features, references), as in the report")
    i.set_defaults(func=cmd_info)
    return i


def cmd_info(args) -> int:
    from ..models import load_model
    from ..models._base import model_facts
    from ..persistence import printable, read_manifest

    model = load_model(args.model)  # checks the whole file (a damaged one is a one-line error)
    if args.methods:
        from ..report import methods_text

        # names from the file (batch column, formula) with their control characters escaped, line by line
        print("\n".join(printable(line) for line in methods_text(model).split("\n")))
        return 0
    manifest = read_manifest(args.model)
    facts = model_facts(model)
    facts.insert(1, ("written by", f"featharm {manifest.get('featharm_version') or '(unknown version)'}"
                                   + (f", {manifest['created']}" if manifest.get("created") else "")))
    log = list(getattr(model, "fit_warnings_", []))
    width = max(len(k) for k, _ in facts)
    lines = [f"{args.model}"]
    for k, v in facts:
        if k == "warnings at fit" and log:  # one line each
            lines.append(f"  {k:<{width}}  {len(log)}")
            lines += [f"    {printable(w['category'])}: {printable(w['message'])}" for w in log]
        else:  # names, levels and texts come from the file: control characters are shown escaped
            lines.append(f"  {k:<{width}}  {printable(v)}")
    if args.features:
        lines += ["features:"] + [f"  {printable(f)}" for f in model.feature_names_in_]
    print("\n".join(lines))
    return 0
