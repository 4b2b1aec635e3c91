"""What distribution alignment does to the post-training start, before any training step:

    python3 -m onnxquant_qat.da_probe --teacher models/fixtures/detr_small.pt --recipe OUT/4-4-8/recipe.json

For the start without and with DA it prints, per decoder co-attention block, the relative quantization MSE of the
query input (tgt + query_pos: ||Q(x) - x||^2 / ||x||^2, with DA ||DA(x, Q) - x||^2 / ||x||^2) on the validation
images, and the start's validation AP; then the AP of the start with those query-input quantizers kept float, the
most any alignment of the query input can give at the start. Data and validation split as the ablation's CPU
schedule (768 synthetic training images, the last 256 held out).
"""
import argparse
import sys
from typing import Dict

import torch

from .lsq import LsqQuantizer
from .modules import QuantSplitAttention
from .recipe import Recipe
from .train import DataSplit, pool, post_training_student, validation_detections


def query_input_errors(student: torch.nn.Module, images: torch.Tensor) -> Dict[str, float]:
    errors: Dict[str, torch.Tensor] = {}

    def probe(name):
        def hook(module, args):
            x = args[0]
            aq = module.q_proj.aq
            seen = module.align(x, aq) if module.align is not None else aq(x)
            errors[name] = ((seen - x) ** 2).sum() / (x ** 2).sum()
        return hook

    blocks = {n: m for n, m in student.named_modules() if isinstance(m, QuantSplitAttention) and "cross_attn" in n}
    hooks = [m.register_forward_pre_hook(probe(n)) for n, m in blocks.items()]
    try:
        with torch.no_grad():
            student.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return {n: float(e) for n, e in errors.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--train-images", type=int, default=768)
    p.add_argument("--val-images", type=int, default=256)
    p.add_argument("--pool-cache", help="file to keep the generated training images in between runs (.pt)")
    args = p.parse_args(argv)
    from onnxquant_models import detr as detr_module
    torch.set_num_threads(1)
    cfg = detr_module.detr_small()
    make_model = lambda: detr_module.build_detr(cfg)
    teacher = make_model()
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu"))
    teacher.eval()
    recipe = Recipe.load(args.recipe)
    images, targets = pool((0, args.train_images, 128), args.pool_cache)
    split = DataSplit.of(images, targets, args.val_images)
    device = torch.device("cpu")
    plain = None
    for align in (False, True):
        student = post_training_student(teacher, make_model, recipe, split, device, align=align).eval()
        errors = query_input_errors(student, split.val_images)
        ap = validation_detections(student, split.val_images, split.val_targets, device).ap()
        print(f"{'with' if align else 'without'} DA: validation AP {100 * ap:.1f}; query-input relative MSE "
              + ", ".join(f"{n} {100 * e:.2f} %" for n, e in errors.items()))
        plain = plain or student
    # Keeping the query-input quantizers float bounds what aligning that input can recover at the start.
    for name, module in plain.named_modules():
        if isinstance(module, QuantSplitAttention) and "cross_attn" in name and isinstance(module.q_proj.aq,
                                                                                            LsqQuantizer):
            module.q_proj.aq = torch.nn.Identity()
    ap = validation_detections(plain, split.val_images, split.val_targets, device).ap()
    print(f"query inputs float: validation AP {100 * ap:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
