"""Model files as the engine runs them: TorchScript modules and ``torch.export`` programs.

Why one place: models, patch encoders and slide models all load the same two formats, and a
file that does not load must fail the same way (one line naming the file) whoever loads it.
``.pt2`` programs must also take any batch size: a program exported for a fixed batch refuses
every other batch, and the last batch of each checkpoint group is shorter. Left alone it fails
at its first probe with torch's "Guard failed: x.size()[0] == 32"; checked here, the user
reads which batch the file was exported for and how to export it so that it runs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from .errors import ModelError, one_line

EXPORT_HINT = (
    "export it with a dynamic batch: torch.export.export(model, (x,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},))"
)


def fixed_batch(program: Any) -> int | None:
    """The batch size a program's first input is fixed to, None where it is dynamic (or the
    program has no tensor input to tell)."""
    names = list(program.graph_signature.user_inputs)
    if not names:
        return None
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == names[0]:
            value = node.meta.get("val")
            shape = getattr(value, "shape", None)
            if shape is None or len(shape) == 0:
                return None
            return shape[0] if isinstance(shape[0], int) else None
    return None


def load_program(path: Path, batch_size: int) -> Any:
    """The program at ``path`` as a callable module, refused in one line where it was exported
    for a fixed batch the engine cannot always feed (any but 1 with ``batch_size`` 1).

    Raises
    ------
    ModelError
        Not a loadable ``torch.export`` program, or one with a fixed batch.
    """
    import torch

    quiet = logging.getLogger("torch.export")  # it logs a traceback before raising
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        raise ModelError(
            str(path), f"not a loadable torch.export program: {one_line(exc)}"
        ) from exc
    finally:
        quiet.setLevel(level)
    fixed = fixed_batch(program)
    if fixed is not None and not fixed == batch_size == 1:
        raise ModelError(
            str(path),
            f"exported for a fixed batch of {fixed} images, but the last batch of a group is "
            f"shorter (--batch-size {batch_size}); {EXPORT_HINT}",
        )
    return program.module()


def load_torchscript(
    path: Path, map_location: Any = "cpu", *, kind: str = "TorchScript model"
) -> Any:
    """The TorchScript module at ``path`` in eval mode, its tensors on ``map_location``.

    Raises
    ------
    ModelError
        Not a loadable TorchScript file ("not a loadable <kind>").
    """
    import torch

    try:
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        raise ModelError(str(path), f"not a loadable {kind}: {one_line(exc)}") from exc
    return module.eval()
