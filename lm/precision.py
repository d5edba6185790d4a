"""Mixed precision: bf16 or fp16 autocast with fp32 master weights, where the hardware runs it
natively. autocast enters it, default_dtype picks the dtype of a device, check_dtype refuses one
that cannot run there, and compute_dtype says what a matmul runs in at the moment."""
import torch

from lm.cli import UserError

DTYPES = ("fp32", "bf16", "fp16")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast's compute dtype of each mixed precision


def autocast(device, dtype):
    """Mixed precision for dtype "bf16" or "fp16": matmuls and the LSTM kernels run in that
    dtype while the weights, their gradients and the optimizer stay fp32 ("master weights").
    fp16 training also needs loss scaling (optim.LossScaler). "fp32" is a no-op."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=HALF.get(dtype, torch.bfloat16), enabled=dtype != "fp32")


def bf16_is_fast(device):
    """True where bfloat16 matmuls run natively: CUDA GPUs of compute capability 8.0 or more
    (torch.cuda.is_bf16_supported() also says True where bf16 is only emulated, e.g. on a T4), and
    CPUs with AVX512-BF16 or AMX (on other CPUs oneDNN has no bf16 LSTM; see check_dtype)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def default_dtype(device):
    """bf16 where the device runs it natively, fp16 with loss scaling on the other CUDA GPUs
    (T4, V100), fp32 elsewhere (CPUs without bf16, and MPS and other accelerators)."""
    if bf16_is_fast(device):
        return "bf16"
    return "fp16" if torch.device(device).type == "cuda" else "fp32"


def check_dtype(device, dtype, unscaled_backward=False, flag="--dtype"):
    """Refuse `dtype` where it cannot run on `device`. On a CPU without AVX512-BF16 or AMX, oneDNN
    cannot make its bf16 LSTM primitive at all, nor an fp16 one on CPUs like ours; mixed precision
    on other accelerators (MPS, XPU) has not been verified. unscaled_backward: the caller takes
    gradients without loss scaling (dynamic evaluation), where fp16's small gradients would flush
    to zero."""
    if dtype == "fp32":
        return
    kind = torch.device(device).type
    reason = None
    if dtype == "bf16" and kind == "cpu" and not bf16_is_fast(device):
        reason = "bf16 needs a CPU with AVX512-BF16 or AMX, and this one has neither; use fp32"
    elif dtype == "fp16" and kind != "cuda":
        reason = "fp16 (with loss scaling) is for CUDA GPUs without native bf16; on this device use fp32"
    elif kind not in ("cpu", "cuda"):
        reason = f"mixed precision on {kind} has not been verified by this project; use fp32"
    elif dtype == "fp16" and unscaled_backward:
        reason = "this takes gradients without loss scaling, which fp16 would flush to zero; use fp32 or bf16"
    if reason:
        raise UserError(f"{flag} {dtype}: {reason}")


def compute_dtype(device_type, default):
    """The dtype that autocast gives matmuls on this device type, or `default` outside autocast."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else default
