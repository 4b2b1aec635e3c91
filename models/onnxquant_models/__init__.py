"""Reference models, synthetic data and export tools for OnnxQuant.

Modules:
    dataset  -- deterministic synthetic shapes detection / instance segmentation set, COCO-style writer
    boxes    -- box maths (cxcywh <-> xyxy, area, IoU, generalized IoU), shared with the QAT bridge
    detr     -- DETR (ResNet backbone + transformer), Hungarian matcher and set criterion
    maskrcnn -- Mask-RCNN with Swin-T or ViT (simple feature pyramid) backbones from torchvision components
    export   -- ONNX export (opset 17) with backbone features as extra outputs, RoiAlign attribute fix
"""
