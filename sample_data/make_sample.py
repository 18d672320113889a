"""Regenerate the committed sample scene in this folder: ``python sample_data/make_sample.py``.

Same as ``ndgeo sample-data sample_data --overwrite`` (seed 0, 256 x 256 pixels).
"""

from pathlib import Path

from ndgeo.sample import make_sample, validate_sample

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    scene = make_sample(here, overwrite=True)
    problems = validate_sample(here)
    names = (scene.image, scene.labels_raster, scene.labels_vector, scene.labels_two,
             scene.classes_csv, scene.truth_json)
    print(f"wrote {', '.join(p.name for p in names)} in {here}")
    if problems:
        raise SystemExit("invalid sample: " + "; ".join(problems))
