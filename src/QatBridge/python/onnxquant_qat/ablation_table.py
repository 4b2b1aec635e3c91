"""Prints the Q-DETR ablation table (markdown) from the folders qdetr_ablation.sh wrote: per setting and variant,
the mean and sample standard deviation over seeds of COCO box AP and AP50 on the eval set, the lowest AP and AP50
change against the post-training start over seeds, the validation AP (held-out training images, IoU 0.50:0.95) at
the start and at the kept checkpoint, and how many seeds kept the start (no checkpoint beat it with confidence).

    python3 ablation_table.py OUT_DIR WALL_SECONDS
"""
import glob
import json
import os
import statistics
import sys

VARIANTS = (("baseline", "baseline QAT", "", ""), ("da", "+DA", "x", ""), ("fqm", "+FQM", "", "x"),
            ("qdetr", "+DA +FQM (Q-DETR)", "x", "x"))


def load(path):
    with open(path) as f:
        return json.load(f)


def spread(values, scale=100.0):
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv):
    out, wall = argv
    teacher = load(os.path.join(out, "teacher_eval.json"))["bbox"]
    teacher_val_path = os.path.join(out, "teacher_validation.json")
    teacher_val = f"{100 * load(teacher_val_path)['ap']:.1f}" if os.path.exists(teacher_val_path) else ""
    rows = ["| W-A-Attention | method | DA | FQM | seeds | AP | AP50 | worst seed vs start: ΔAP / ΔAP50 | "
            "val AP start → kept | start kept |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| 32-32-32 | real-valued teacher | | | | {100 * teacher['AP']:.1f} | {100 * teacher['AP50']:.1f} | | "
            f"{teacher_val} | |"]
    schedule = None
    settings = [d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, "recipe.json"))]
    # Widest first (4-4-8 before 2-2-8).
    for bits in sorted(settings, key=lambda b: [-int(x) for x in b.split("-") if x.isdigit()]):
        start_path = os.path.join(out, bits, "untrained", "eval.json")
        if not os.path.exists(start_path):
            rows.append(f"| {bits} | post-training start | | | | missing | | | | |")
            continue
        start = load(start_path)["bbox"]
        start_val = load(os.path.join(out, bits, "untrained", "train", "train.json"))["start_validation_ap"]
        rows.append(f"| {bits} | post-training start (no QAT step) | | | | {100 * start['AP']:.1f} | "
                    f"{100 * start['AP50']:.1f} | | {100 * start_val:.1f} | |")
        for key, name, da, fqm in VARIANTS:
            runs = sorted(glob.glob(os.path.join(out, bits, "seed*", key, "eval.json")))
            if not runs:
                rows.append(f"| {bits} | {name} | {da} | {fqm} | 0 | missing | | | | |")
                continue
            evals = [load(p)["bbox"] for p in runs]
            trains = [load(os.path.join(os.path.dirname(p), "train", "train.json")) for p in runs]
            schedule = schedule or trains[0]
            d_ap = min(100 * (e["AP"] - start["AP"]) for e in evals)
            d_ap50 = min(100 * (e["AP50"] - start["AP50"]) for e in evals)
            kept = statistics.mean(100 * t["kept"]["ap"] for t in trains)
            start_kept = sum(t["kept"]["stage"] == 0 for t in trains)
            rows.append(f"| {bits} | {name} | {da} | {fqm} | {len(runs)} | {spread([e['AP'] for e in evals])} | "
                        f"{spread([e['AP50'] for e in evals])} | {d_ap:+.2f} / {d_ap50:+.2f} | "
                        f"{100 * trains[0]['start_validation_ap']:.1f} → {kept:.1f} | {start_kept} of {len(runs)} |")
    print("\n".join(rows))
    print()
    if schedule:
        print(f"COCO box AP (%) on the 100 eval images, mean ± sample standard deviation over seeds; stage 1 "
              f"{schedule['stage1_steps']} steps, stage 2 {schedule['stage2_steps']} steps, batch "
              f"{schedule['batch_size']}, lr {schedule['lr']:g} (weights) / {schedule['lr_quant']:g} (quantizers), "
              f"validation every {schedule['eval_every']} steps; whole run {int(wall) // 60} min {int(wall) % 60} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
