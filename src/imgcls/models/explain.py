"""Why a net chose a class: Grad-CAM maps (pytorch-grad-cam's GradCAM) of a batch of images for
one class each, for the eval report's wrong images and `predict.py explain=true`.

What a map is taken from, found once per net and input size (`cam_target`):
- a ViT: the last block's first norm, its tokens (less the class / register tokens) laid back on
  the patch grid: timm's VisionTransformer, DeiT, EVA, BEiT (`blocks[-1].norm1`,
  `num_prefix_tokens`), torchvision's VisionTransformer (`encoder.layers[-1].ln_1`, one class
  token);
- any other net (ours, torchvision's and timm's CNNs): the module whose output is the last
  NCHW feature map larger than 1 x 1 before the head, seen by forward hooks on one blank image;
  its outermost module where several end on the same map (ResNet's `layer4`), one the forward
  calls once (a shared ReLU is called per block).
A net with neither (an MLP, a TorchScript or ONNX file, NHWC maps such as Swin's) is refused in
one line (`NotExplainableError`).

Evaluation, not training: under Lightning's test and predict loops torch is in inference mode,
so the maps are computed with it off and gradients on, on a fresh copy of the images; the net is
put in eval mode with its parameters fixed (only the activations get gradients; nothing lands in
`.grad`) and given back as it was. The whole batch is one forward and one backward; the host
waits on the device a few times per batch (the activations and gradients come to the host, as
pytorch-grad-cam computes the maps there), never per image. pytorch-grad-cam is imported here,
when a map is asked for: it takes seconds.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imgcls.models.class_map import ClassColumns
from imgcls.utils.errors import UserError, one_line


class NotExplainableError(UserError):
    """A net whose class-activation maps this module cannot take."""


def _as_float(maps: Tensor) -> Tensor:
    return maps.float()  # NumPy, where the library takes them, has no bfloat16


@dataclass
class CamTarget:
    """The layer a map is taken from; `reshape` lays its output (and gradient) out as a float
    NCHW map: a ViT's tokens on the patch grid."""

    layer: nn.Module
    name: str
    reshape: Callable[[Tensor], Tensor] = _as_float


def _timm_vit(net: nn.Module) -> bool:
    blocks = getattr(net, "blocks", None)
    return (
        isinstance(blocks, nn.Sequential | nn.ModuleList)
        and len(blocks) > 0
        and hasattr(blocks[-1], "norm1")
        and hasattr(net, "patch_embed")
        and isinstance(getattr(net, "num_prefix_tokens", None), int)
    )


def _token_grid(prefix: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """(batch, prefix + h * w, channels) tokens -> (batch, channels, h, w)."""
    h, w = grid

    def reshape(tokens: Tensor) -> Tensor:
        patches = tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[-1])
        return patches.permute(0, 3, 1, 2).float()

    return reshape


def _vit_target(net: nn.Module, size: tuple[int, int]) -> CamTarget | None:
    """The last block's first norm of a ViT of timm's or torchvision's, or None."""
    from torchvision.models.vision_transformer import VisionTransformer

    if isinstance(net, VisionTransformer):
        side = net.image_size // net.patch_size
        layer = net.encoder.layers[-1].ln_1
        return CamTarget(layer, "encoder.layers.-1.ln_1", _token_grid(1, (side, side)))
    if not _timm_vit(net):
        return None
    embed = net.patch_embed
    if hasattr(embed, "dynamic_feat_size"):  # any input size where the net takes one
        grid = tuple(embed.dynamic_feat_size(size))
    else:
        grid = tuple(embed.grid_size)
    prefix = net.num_prefix_tokens
    return CamTarget(net.blocks[-1].norm1, "blocks.-1.norm1", _token_grid(prefix, grid))


def _spatial(output: object, size: tuple[int, int]) -> bool:
    """Whether a module's output is an NCHW feature map larger than 1 x 1 of an image of `size`:
    both sides shrunk by about the same stride (an NHWC map, read as NCHW, is not)."""
    if not isinstance(output, Tensor) or output.ndim != 4:
        return False
    h, w = output.shape[-2:]
    if h * w <= 1 or h > size[0] or w > size[1]:
        return False
    strides = size[0] / h, size[1] / w
    return max(strides) / min(strides) <= 2


def _cnn_target(net: nn.Module, example: Tensor, head: nn.Module | None) -> CamTarget | None:
    """The outermost module that ends on the last spatial feature map before the head, called
    once per forward: seen on `example` with forward hooks."""
    in_head = set(head.modules()) if head is not None else set()
    names = {m: n for n, m in net.named_modules() if m is not net and m not in in_head}
    calls: dict[nn.Module, int] = {}
    finished: list[tuple[nn.Module, bool]] = []  # in the order their forwards end
    at_head = [False]

    def ended(module: nn.Module, args: object, output: object) -> None:
        calls[module] = calls.get(module, 0) + 1
        if not at_head[0]:
            finished.append((module, _spatial(output, tuple(example.shape[-2:]))))

    def head_starts(module: nn.Module, args: object) -> None:
        at_head[0] = True

    handles = [m.register_forward_hook(ended) for m in names]
    if head is not None:
        handles.append(head.register_forward_pre_hook(head_starts))
    try:
        with torch.no_grad():
            net(example)
    except Exception as err:  # a net that runs outside Python (ONNX Runtime), or not at this size
        why = one_line(err)
        raise NotExplainableError(f"{type(net).__name__} cannot be explained: {why}") from err
    finally:
        for handle in handles:
            handle.remove()
    for module, spatial in reversed(finished):
        if spatial and calls[module] == 1:
            return CamTarget(module, names[module])
    return None


def _check_tokens(net: nn.Module, example: Tensor, target: CamTarget) -> None:
    """A ViT's tokens at `target` fill its patch grid (less its prefix tokens) at this size."""
    seen: list[Tensor] = []
    handle = target.layer.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        with torch.no_grad():
            net(example)
        target.reshape(seen[-1])
    except (RuntimeError, AssertionError) as err:  # timm asserts an input size
        raise NotExplainableError(
            f"{type(net).__name__} cannot be explained at {tuple(example.shape[-2:])}: its "
            f"tokens do not fill its patch grid ({one_line(err)})."
        ) from err
    finally:
        handle.remove()


def cam_target(net: nn.Module, example: Tensor, head: nn.Module | None = None) -> CamTarget:
    """What `net`'s maps are taken from, for images shaped as `example` (C, H, W) or (1, C, H,
    W); `head`: the classifier layer, which a feature map must come before."""
    if any(isinstance(m, torch.jit.ScriptModule) for m in net.modules()):
        raise NotExplainableError(
            f"{type(net).__name__} runs TorchScript, which has no layers to explain: explain "
            "the checkpoint it was exported from."
        )
    example = example if example.ndim == 4 else example[None]
    size = tuple(example.shape[-2:])
    with evaluating(net):
        example = example[:1].detach().clone()
        # a model scored on some of its classes (models/class_map.py) is its net's columns
        inner = net.net if isinstance(net, ClassColumns) else net
        target = _vit_target(inner, size)
        if target is not None:
            _check_tokens(net, example, target)
        else:
            target = _cnn_target(net, example, head)
    if target is None:
        raise NotExplainableError(
            f"{type(net).__name__} cannot be explained: it has no NCHW feature map larger than "
            "1 x 1 before its head, and is no ViT of timm's or torchvision's."
        )
    return target


@contextmanager
def evaluating(net: nn.Module) -> Iterator[None]:
    """The net in eval mode, its parameters fixed, gradients on outside inference mode; its
    modes and parameters' requires_grad given back afterwards."""
    modes = [(m, m.training) for m in net.modules()]
    trainable = [(p, p.requires_grad) for p in net.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            net.eval()
            for param, _ in trainable:
                param.requires_grad_(False)
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires in trainable:
            param.requires_grad_(requires)


class _Borrowed(nn.Module):
    """The net as pytorch-grad-cam calls it, not as its child: the library puts its model in
    eval mode and zeroes its gradients, which must not reach the net (its modes are given back
    by `evaluating`, its `.grad` left alone). The one empty parameter tells the library the
    device."""

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.place = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        object.__setattr__(self, "net", net)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)


class Explainer:
    """Grad-CAM maps of a net for images of one size: `explainer(images, classes)`."""

    def __init__(self, net: nn.Module, example: Tensor, head: nn.Module | None = None) -> None:
        """`example`: an image (or batch) of the size to explain; raises `NotExplainableError`
        (also where pytorch-grad-cam cannot be imported: an environment set up by hand, such
        as a GPU machine's, may lack it and its opencv)."""
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError as err:
            raise NotExplainableError(
                f"pytorch-grad-cam cannot be imported ({err}): pip install grad-cam, or "
                "callbacks.eval_report.explain=false."
            ) from err
        self.net = net
        self.target = cam_target(net, example, head)

    def __call__(self, images: Tensor, classes: Sequence[int] | Tensor) -> Tensor:
        """Maps (N, H, W) in [0, 1] on the CPU, each scaled to its own maximum, of normalized
        images (N, C, H, W) for one class each: one forward and one backward of the batch."""
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        if isinstance(classes, Tensor):
            classes = classes.tolist()  # one read for the batch: a device index is a wait each
        if len(classes) != len(images):
            raise ValueError(f"{len(images)} images but {len(classes)} classes")
        if len(images) == 0:
            return torch.zeros(0, *images.shape[-2:])
        with evaluating(self.net):
            floats = (p.dtype for p in self.net.parameters() if p.is_floating_point())
            dtype = next(floats, images.dtype)
            fresh = images.detach().to(dtype=dtype, copy=True).requires_grad_(True)
            borrowed = _Borrowed(self.net, fresh.device)
            cam = GradCAM(borrowed, [self.target.layer], reshape_transform=self.target.reshape)
            try:
                maps = cam(fresh, [ClassifierOutputTarget(int(c)) for c in classes])
            finally:
                cam.activations_and_grads.release()
        return torch.from_numpy(maps).float()
