"""Prints the Q-DETR ablation table (markdown) from the folders qdetr_ablation.sh wrote.

    python3 ablation_table.py OUT_DIR STAGE1_STEPS STAGE2_STEPS BATCH WALL_SECONDS
"""
import json
import os
import sys

VARIANTS = (("untrained", "quantized, no QAT step (initial scales)", "", ""),
            ("baseline", "baseline QAT", "", ""),
            ("da", "+DA", "x", ""),
            ("fqm", "+FQM", "", "x"),
            ("qdetr", "+DA +FQM (Q-DETR)", "x", "x"))


def bbox(path):
    with open(path) as f:
        return json.load(f)["bbox"]


def main(argv):
    out, s1, s2, batch, wall = argv
    teacher = bbox(os.path.join(out, "teacher_eval.json"))
    rows = ["| W-A-Attention | method | DA | FQM | AP | AP50 | AP75 |", "| --- | --- | --- | --- | --- | --- | --- |",
            f"| 32-32-32 | real-valued teacher | | | {100 * teacher['AP']:.1f} | {100 * teacher['AP50']:.1f} | "
            f"{100 * teacher['AP75']:.1f} |"]
    for bits in ("4-4-8", "2-2-8"):
        for key, name, da, fqm in VARIANTS:
            path = os.path.join(out, bits, key, "eval.json")
            if not os.path.exists(path):
                rows.append(f"| {bits} | {name} | {da} | {fqm} | missing | | |")
                continue
            b = bbox(path)
            rows.append(f"| {bits} | {name} | {da} | {fqm} | {100 * b['AP']:.1f} | {100 * b['AP50']:.1f} | "
                        f"{100 * b['AP75']:.1f} |")
    print("\n".join(rows))
    print()
    print(f"COCO box AP (%) on the 100 eval images; stage 1 {s1} steps, stage 2 {s2} steps, batch {batch}; "
          f"whole run {int(wall) // 60} min {int(wall) % 60} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
