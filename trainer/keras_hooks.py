"""The private tf-keras 2.21 hooks spotrain relies on, in one place.

1. ``Model.fit`` calls ``self._maybe_load_initial_counters_from_ckpt(steps_per_epoch,
   initial_epoch)`` right after ``callbacks.on_train_begin()``; it delegates to
   ``self._training_state.maybe_load_initial_counters_from_ckpt(steps_per_epoch,
   initial_epoch, mode=...)`` when ``model._training_state`` is set, and sets the data
   handler's initial epoch and step from the result. Installing a :class:`ResumePoint` there
   makes one ``fit`` call start at (epoch e0, step s0) with Keras' own step numbering.
2. ``CallbackList.on_train_begin`` calls each callback's ``on_train_begin`` from a frame whose
   ``self`` is the CallbackList: spotrain finds the other callbacks (EarlyStopping, History...)
   there to save and restore their state.
   spotrain also wraps that CallbackList's ``on_train_batch_end`` / ``on_epoch_end`` (an
   instance attribute, removed at the end) to act once every callback's end hook ran, or
   one of them raised (:func:`guard_hooks`).
3. A distributed dataset (``distribute_datasets_from_function``) is never re-iterated per epoch
   by ``DataHandler`` (``DatasetAdapter.should_recreate_iterator`` is False for it).
4. ``Model.fit`` builds its ``data_handler`` before ``callbacks.on_train_begin()``: its
   adapter's dataset gives the input's element spec (:func:`fit_element_spec`), from which an
   unbuilt model and its compiled metrics are built before the restore. A distributed
   dataset's spec is one ``PerReplicaSpec`` per leaf (:func:`per_example_spec`).
5. ``Model.fit`` assigns ``model._train_counter = 0`` before ``on_train_begin``; a restore
   there sets it to the saved count (TensorBoard's batch-summary step).

``check_hooks()`` verifies 1 and 3 at run time and fails loudly if tf-keras changed;
tests/trainer/test_trainer_keras_hooks.py pins all of them.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from trainer import env  # noqa: F401

import tensorflow as tf  # isort: skip

TESTED_TF_KERAS = "2.21"


class ResumePoint:
    """Stand-in for tf-keras' WorkerTrainingState: tells ``fit`` where to start."""

    def __init__(self, epoch: int, step_in_epoch: int) -> None:
        self.epoch = epoch
        self.step_in_epoch = step_in_epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch: int, initial_epoch: int, mode: Any = None
    ) -> tuple[int, int]:
        epoch, step = self.epoch, self.step_in_epoch
        if steps_per_epoch and step >= steps_per_epoch:
            epoch, step = epoch + 1, 0
        if initial_epoch > epoch:
            return initial_epoch, 0
        return epoch, step


_checked = False


def check_hooks() -> None:
    """Raise RuntimeError naming the hook if the installed tf-keras lacks one."""
    global _checked
    if _checked:
        return
    from tf_keras.src.engine import data_adapter, training

    problems = []
    if not hasattr(training.Model, "_maybe_load_initial_counters_from_ckpt"):
        problems.append("Model._maybe_load_initial_counters_from_ckpt is gone")
    else:
        src = inspect.getsource(training.Model._maybe_load_initial_counters_from_ckpt)
        if "self._training_state.maybe_load_initial_counters_from_ckpt" not in src:
            problems.append("_maybe_load_initial_counters_from_ckpt no longer uses _training_state")
        fit_src = inspect.getsource(training.Model.fit)
        if "data_handler._initial_step" not in fit_src:
            problems.append("Model.fit no longer sets data_handler._initial_step")
    adapter_src = inspect.getsource(data_adapter.DatasetAdapter.should_recreate_iterator)
    if "_is_distributed_dataset(self._dataset)" not in adapter_src:
        problems.append("DatasetAdapter may recreate a distributed dataset's iterator per epoch")
    if problems:
        raise RuntimeError(
            f"tf-keras {tf.keras.__version__} changed private APIs spotrain relies on "
            f"(tested with {TESTED_TF_KERAS}): {'; '.join(problems)}. Pin tf-keras=="
            f"{TESTED_TF_KERAS}.* or update trainer/keras_hooks.py"
        )
    _checked = True


def install_resume_point(model: tf.keras.Model, epoch: int, step_in_epoch: int) -> None:
    check_hooks()
    model._training_state = ResumePoint(epoch, step_in_epoch)


def remove_resume_point(model: tf.keras.Model) -> None:
    if isinstance(getattr(model, "_training_state", None), ResumePoint):
        model._training_state = None


def calling_callback_list(depth: int = 2) -> list[Any] | None:
    """The callbacks of the CallbackList that called the current callback method, or None."""
    owner = calling_callback_list_object(depth + 1)
    return None if owner is None else list(owner.callbacks)


def calling_callback_list_object(depth: int = 2) -> Any:
    """The CallbackList that called the current callback method, or None."""
    frame: Any = sys._getframe(depth)
    for _ in range(4):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, tf.keras.callbacks.CallbackList):
            return owner
        frame = frame.f_back
    return None


def fit_element_spec(depth: int = 2) -> Any:
    """The per-example element spec (``(x, y[, w])`` or ``x``, no batch dimension) of the
    input of the ``Model.fit`` call that runs the current callback method, or None."""
    frame: Any = sys._getframe(depth)
    for _ in range(8):
        if frame is None:
            return None
        handler = frame.f_locals.get("data_handler") if frame.f_code.co_name == "fit" else None
        if handler is not None:
            break
        frame = frame.f_back
    else:
        return None
    try:
        spec = handler._adapter.get_dataset().element_spec
    except (AttributeError, TypeError, ValueError):  # an adapter without a tf.data dataset
        spec = getattr(getattr(handler, "_dataset", None), "element_spec", None)
    if spec is None:
        return None

    return tf.nest.map_structure(per_example_spec, spec)


def per_example_spec(spec: Any) -> Any:
    """One leaf of a batched element spec without its batch dimension. A distributed dataset
    (``distribute_datasets_from_function`` under a strategy with several replicas) gives a
    ``PerReplicaSpec`` per leaf: every replica's batch has the same spec, the first is used."""
    if type(spec).__name__ == "PerReplicaSpec" and getattr(spec, "_component_specs", None):
        spec = spec._component_specs[0]
    if isinstance(spec, tf.TensorSpec) and spec.shape.rank:
        return tf.TensorSpec(spec.shape[1:], spec.dtype)
    return spec


#: CallbackList hooks :func:`guard_hooks` wraps
GUARDED_HOOKS = ("on_train_batch_end", "on_epoch_end")


def guard_hooks(
    callback_list: Any,
    after: Callable[[str, int, Any], None],
    on_error: Callable[[str, BaseException, int, Any], None],
) -> None:
    """Wrap ``callback_list``'s :data:`GUARDED_HOOKS`: ``after(hook, index, logs)`` once every
    callback's hook returned, ``on_error(hook, exc, index, logs)`` when one raised (the
    exception is re-raised after it). Undo with :func:`unguard_hooks`."""
    unguard_hooks(callback_list)
    for hook in GUARDED_HOOKS:
        original = getattr(callback_list, hook)

        def guarded(
            index: int, logs: Any = None, _hook: str = hook, _original: Any = original
        ) -> None:
            try:
                _original(index, logs)
            except Exception as exc:
                on_error(_hook, exc, index, logs)
                raise
            after(_hook, index, logs)

        guarded.spotrain_guard = True  # type: ignore[attr-defined]
        setattr(callback_list, hook, guarded)


def unguard_hooks(callback_list: Any) -> None:
    for hook in GUARDED_HOOKS:
        if getattr(vars(callback_list).get(hook), "spotrain_guard", False):
            delattr(callback_list, hook)
