"""scripts/demo.py end to end with 2 batches per stage: every CLI it runs works together and the summary prints."""
import os


def test_demo_runs_both_stages_and_reports_accuracy_curve_and_scenes(tmp_path, run_script):
    out = run_script("demo", "--stage1-steps", 2, "--stage2-steps", 2, "--eval-n", 4, "--long",
                     "--logdir", tmp_path / "logs", timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "=== demo finished in" in text and "stage 1 run:" in text
    assert "accuracy curve (" in text  # the ShapesAccuracy callback's point after the last batch
    assert "checker accuracy on 4 balanced captions" in text and "target 90%" in text
    assert "two-object captions (4 images, 8 objects)" in text
    runs = os.listdir(tmp_path / "logs")
    assert any(r.endswith("_demo_autoencoder") for r in runs) and any(r.endswith("_demo_txt2img_long") for r in runs)
