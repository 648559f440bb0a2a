"""Which variables a SavedModel's saver restores, from which checkpoint entries.

Matches the saver graphs TF builds (app.runtime.restore uses the result to restore in paced
units), and raises `Unsupported` for anything else, so that TF's own restore runs instead:
- TF1 savers: the restore op is a NoOp whose control inputs (through NoOps, one per shard) are
  an `Assign` per ref variable fed by a RestoreV2 output, or an `AssignVariableOp` per resource
  variable fed through an `Identity`.
- TF2 SavedModels loaded as TF1 graphs: the restore op is a (Stateful)PartitionedCall of a
  traced function (`__inference__traced_restore_*`) taking the checkpoint prefix and the
  variables' handles, whose body holds only Const, RestoreV2, Identity, NoOp and
  AssignVariableOp(handle argument, Identity(RestoreV2 output)); restored entries nobody
  assigns must be strings (the object graph, `_CHECKPOINTABLE_OBJECT_GRAPH`).
Every assigned entry must be stored whole (no slices: partitioned variables are restored from
slices), numeric, of the variable's dtype and static shape. Graph building only: one thread.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saver_pb2
from tensorflow.python.framework import tensor_util

_NUMERIC = frozenset(
    tf.as_dtype(t).as_datatype_enum
    for t in (
        tf.float16,
        tf.bfloat16,
        tf.float32,
        tf.float64,
        tf.int8,
        tf.int16,
        tf.int32,
        tf.int64,
        tf.uint8,
        tf.uint16,
        tf.uint32,
        tf.uint64,
        tf.bool,
        tf.complex64,
        tf.complex128,
    )
)


@dataclass(slots=True)
class Target:
    """One variable to restore: its checkpoint entry and where it goes."""

    key: str
    entry: Any  # BundleEntryProto
    dtype: tf.DType
    shape: tuple[int, ...]
    var: tf.Tensor  # the ref tensor (ref variable) or the resource handle
    resource: bool
    validate_shape: bool


class Unsupported(Exception):
    """The saver graph is not the standard pattern; the message says why."""


def _leaves(restore_op: tf.Operation) -> list[tf.Operation]:
    """The assign ops the restore op runs, through NoOps' control inputs."""
    stack, leaves, seen = [restore_op], [], set()
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.type == "NoOp" and not op.inputs:
            stack.extend(op.control_inputs)
        elif op.type in ("Assign", "AssignVariableOp"):
            leaves.append(op)
        else:
            raise Unsupported(f"the restore runs {op.type} op {op.name}")
    return leaves


def _source(leaf: tf.Operation) -> tuple[tf.Operation, int]:
    """The RestoreV2 op and output index whose value `leaf` assigns."""
    value = leaf.inputs[1]
    if leaf.type == "AssignVariableOp":
        if value.op.type != "Identity":
            raise Unsupported(f"{leaf.name} assigns a {value.op.type}")
        value = value.op.inputs[0]
    if value.op.type != "RestoreV2":
        raise Unsupported(f"{leaf.name} assigns the output of a {value.op.type}")
    return value.op, value.value_index


def _const_strings(tensor: tf.Tensor) -> list[str]:
    if tensor.op.type != "Const":
        raise Unsupported(f"{tensor.name} is not a constant")
    return [bytes(v).decode("utf-8") for v in tensor_util.MakeNdarray(tensor.op.get_attr("value"))]


def _target(
    key: str, spec: str, dtype_enum: int, var: tf.Tensor, *, validate: bool | None, bundle: Any
) -> Target:
    """The target restoring entry `key` (slice `spec`, restored as `dtype_enum`) into `var`:
    a resource handle when `validate` is None, else a ref variable (its validate_shape)."""
    if spec:
        raise Unsupported(f"{key} is restored as a slice")
    dtype = tf.as_dtype(dtype_enum)
    if dtype.as_datatype_enum not in _NUMERIC:
        raise Unsupported(f"{key} has dtype {dtype.name}")
    resource = validate is None
    if resource:
        if var.op.type != "VarHandleOp":
            raise Unsupported(f"{key} is assigned to a {var.op.type}")
        graph_shape = tf.TensorShape(var.op.get_attr("shape"))
    else:
        graph_shape = var.shape
    if not graph_shape.is_fully_defined():
        # A variable made with validate_shape=False, or a TF2 one of unknown shape.
        raise Unsupported(f"{key}'s variable has no static shape ({graph_shape})")
    entry = bundle.entries.get(key)
    if entry is None:
        raise Unsupported(f"{key} is not in the checkpoint")
    if entry.slices:
        raise Unsupported(f"{key} is stored in slices")
    shape = tuple(int(d.size) for d in entry.shape.dim)
    if entry.dtype != dtype.as_datatype_enum or graph_shape.as_list() != list(shape):
        raise Unsupported(f"{key}: checkpoint dtype/shape differ from the graph's")
    if entry.size != int(np.prod(shape, dtype=np.int64)) * dtype.size:
        raise Unsupported(f"{key}: entry size {entry.size} is not its shape's")
    return Target(key, entry, dtype, shape, var, resource, bool(validate))


def _strings(tensor_proto: Any) -> list[str]:
    return [bytes(v).decode("utf-8") for v in tensor_util.MakeNdarray(tensor_proto)]


def _leaf_target(leaf: tf.Operation, restore: tf.Operation, index: int, bundle: Any) -> Target:
    for constant in restore.inputs[1:3]:
        if constant.op.type != "Const":
            raise Unsupported(f"{constant.name} is not a constant")
    key = _strings(restore.inputs[1].op.get_attr("value"))[index]
    spec = _strings(restore.inputs[2].op.get_attr("value"))[index]
    dtype = restore.get_attr("dtypes")[index]
    validate = None if leaf.type == "AssignVariableOp" else bool(leaf.get_attr("validate_shape"))
    return _target(key, spec, dtype, leaf.inputs[0], validate=validate, bundle=bundle)


def plan(graph: tf.Graph, saver: Any, bundle: Any) -> list[Target]:
    """The variables a standard saver graph restores. Raises Unsupported."""
    saver_def = saver.saver_def
    if saver_def.version != saver_pb2.SaverDef.V2:
        raise Unsupported("V1 checkpoint")
    if sys.byteorder != "little":
        raise Unsupported("big-endian host")
    restore_op = graph.get_operation_by_name(saver_def.restore_op_name)
    if restore_op.type in ("StatefulPartitionedCall", "PartitionedCall"):
        return _plan_function(graph, restore_op, saver_def.filename_tensor_name, bundle)
    targets: list[Target] = []
    used: set[tuple[str, int]] = set()
    restores: dict[str, tf.Operation] = {}
    for leaf in _leaves(restore_op):
        restore, index = _source(leaf)
        if restore.inputs[0].name != saver_def.filename_tensor_name:
            raise Unsupported(f"{restore.name} reads another file")
        if (restore.name, index) in used:
            raise Unsupported(f"{restore.name}:{index} is assigned twice")
        used.add((restore.name, index))
        restores[restore.name] = restore
        targets.append(_leaf_target(leaf, restore, index, bundle))
    for restore in restores.values():
        for out in restore.outputs:
            if (restore.name, out.value_index) not in used:
                raise Unsupported(f"{out.name} is restored but not assigned")
    return targets


_FUNCTION_OPS = frozenset({"Const", "RestoreV2", "Identity", "NoOp", "AssignVariableOp"})


def _plan_function(graph: tf.Graph, call: tf.Operation, filename: str, bundle: Any) -> list[Target]:
    """The targets of a TF2 traced restore function (see the module docstring)."""
    if not call.inputs or call.inputs[0].name != filename:
        raise Unsupported(f"{call.name} does not take the checkpoint prefix first")
    function = graph._get_function(call.get_attr("f").name)  # TF has no public lookup by name
    if function is None:
        raise Unsupported(f"{call.name}'s function is not in the graph")
    fdef = function.cached_definition
    args = {arg.name: i for i, arg in enumerate(fdef.signature.input_arg)}
    nodes = {node.name: node for node in fdef.node_def}
    for node in fdef.node_def:
        if node.op not in _FUNCTION_OPS:
            raise Unsupported(f"the restore function runs {node.op} op {node.name}")
    targets: list[Target] = []
    assigned: set[tuple[str, int]] = set()
    for node in fdef.node_def:
        if node.op != "AssignVariableOp":
            continue
        restore, index = _function_source(nodes, node)
        arg = args.get(node.input[0])
        prefix = restore.input[0]
        if arg is None or args.get(prefix) != 0 or (restore.name, index) in assigned:
            raise Unsupported(f"the restore function's {node.name} is not the standard pattern")
        assigned.add((restore.name, index))
        key = _strings(nodes[restore.input[1].split(":")[0]].attr["value"].tensor)[index]
        spec = _strings(nodes[restore.input[2].split(":")[0]].attr["value"].tensor)[index]
        dtype = restore.attr["dtypes"].list.type[index]
        targets.append(_target(key, spec, dtype, call.inputs[arg], validate=None, bundle=bundle))
    for node in nodes.values():
        if node.op == "RestoreV2":
            for index, dtype in enumerate(node.attr["dtypes"].list.type):
                if (node.name, index) not in assigned and dtype != tf.string.as_datatype_enum:
                    raise Unsupported(f"{node.name}:{index} is restored but not assigned")
    return targets


def _function_source(nodes: dict[str, Any], assign: Any) -> tuple[Any, int]:
    """The RestoreV2 node and output index an AssignVariableOp node of a function assigns."""
    identity = nodes.get(assign.input[1].split(":")[0])
    if identity is None or identity.op != "Identity":
        raise Unsupported(f"the restore function's {assign.name} assigns no Identity")
    name, _, rest = identity.input[0].partition(":")
    restore = nodes.get(name)
    output, _, index = rest.partition(":")
    if restore is None or restore.op != "RestoreV2" or output != "tensors":
        raise Unsupported(f"the restore function's {assign.name} assigns no RestoreV2 output")
    for ref in restore.input[1:3]:
        const = nodes.get(ref.split(":")[0])
        if const is None or const.op != "Const":
            raise Unsupported(f"the restore function's {restore.name} has a non-constant input")
    return restore, int(index)
