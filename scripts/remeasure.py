"""Measure a model file again on its own split and record the errors in it.

    python scripts/remeasure.py MODEL [--data FRAMES.xyz] [--output FILE.pt]

After a change that keeps the weights but changes the model's numbers (e.g. ``symbreak
export --floor H-H=1.0``), the errors a file records (``training.metrics``, and
``MODEL.metrics.json`` beside it) describe the model before the change. This evaluates the
file's PET on the train (first 32), val and test frames of the split it records, exactly
as training's final measurement does (:func:`symbreak.training_data.evaluate`), checks the data's
fingerprint, and writes the file (default: in place) and its ``.metrics.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from symbreak.export import export_model, load_model, rebuild_pet
from symbreak.training_data import evaluate, file_fingerprint, make_samples, read_labelled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shipped model name or model file")
    parser.add_argument("--data", default="../shared/data/water_revpbe0d3_160.xyz")
    parser.add_argument("--output", help="file to write (default: the model file itself)")
    args = parser.parse_args()
    loaded = load_model(args.model)  # the public loader: checks included
    path, meta = loaded.path, loaded.metadata
    training = dict(meta.training)
    data = Path(args.data)
    if file_fingerprint(data) != training.get("data_sha256"):
        raise SystemExit(f"{data} is not the data {path.name} was trained on (sha256 differs)")
    model = rebuild_pet(path, loaded.module, meta).eval()
    samples = make_samples(read_labelled(data), list(model.species), float(model.cutoff))
    split = training["split"]
    before = training.get("metrics", {})
    metrics = {
        "val": evaluate(model, [samples[k] for k in split["val"]]),
        "test": evaluate(model, [samples[k] for k in split["test"]]),
        "train": evaluate(model, [samples[k] for k in split["train"]][:32]),
    }
    for name, values in metrics.items():
        old = before.get(name, {})
        print(
            f"{name:>5}: force MAE {old.get('force_mae_meV_A', float('nan')):.1f} -> "
            f"{values['force_mae_meV_A']:.1f} meV/Å, energy MAE "
            f"{old.get('energy_mae_meV_atom', float('nan')):.2f} -> "
            f"{values['energy_mae_meV_atom']:.2f} meV/atom"
        )
    training["metrics"] = metrics
    output = Path(args.output) if args.output else path
    tmp = output.with_name(output.name + ".tmp")
    export_model(model, tmp, meta.config, training)
    tmp.replace(output)
    record = output.with_suffix(".metrics.json")
    old_record = path.with_suffix(".metrics.json")
    history = json.loads(old_record.read_text()).get("history", []) if old_record.is_file() else []
    record.write_text(json.dumps(training | {"history": history}, indent=1))
    print(f"wrote {output} and {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
