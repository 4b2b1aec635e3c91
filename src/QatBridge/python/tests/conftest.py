import torch

# onnxquant_qat and onnxquant_models are imported as installed packages (`dotnet cake --target=setup-python` installs
# both in editable mode), so the suite runs from any directory.
torch.set_num_threads(2)
