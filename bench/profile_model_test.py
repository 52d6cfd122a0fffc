"""bench/profile_model.py's pure helpers: op-event parsing of an XSpace, self times, op-type
normalisation, the name-scope -> component mapping (on op names seen in real profiles of
the small model) and the summary tables.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -m pytest -q bench/profile_model_test.py   # a few s
"""
import profile_model as pm
import pytest


def test_self_times_subtracts_direct_children_only():
    # parent [0, 100) holds a [10, 40) which holds b [15, 25); c [50, 70) is a second child;
    # d [100, 130) starts when the parent ends: a sibling, not a child.
    spans = [(0, 100), (10, 40), (15, 25), (50, 70), (100, 130)]
    assert pm.self_times(spans) == [100 - 30 - 20, 30 - 10, 10, 20, 30]
    # input order is kept whatever the time order
    assert pm.self_times(list(reversed(spans))) == [30, 20, 10, 20, 50]
    # self times add up to the covered wall time of each outermost event
    assert sum(pm.self_times(spans)) == 130


def test_self_times_clips_a_child_overrunning_its_parent():
    assert pm.self_times([(0, 10), (5, 12)]) == [5, 7]


def test_normalize_op_type():
    assert pm.normalize_op_type("_MklMatMul") == "MatMul"
    assert pm.normalize_op_type("_MklNativeBatchMatMulV2") == "BatchMatMulV2"
    assert pm.normalize_op_type("_MklFusedMatMul") == "FusedMatMul"
    assert pm.normalize_op_type("_MklSoftmax") == "Softmax"
    assert pm.normalize_op_type("Einsum") == "Einsum"
    assert pm.normalize_op_type("SeeklineRmsNorm") == "SeeklineRmsNorm"
    assert pm.normalize_op_type("_Mkl") == "_Mkl"


@pytest.mark.parametrize("name,want", [
    # forward and gradient names of the engine's train step (Keras 3 suffixes _1, _3 ...)
    ("layers_2_1/self_attn_1/MatMul", "attention"),
    ("gradient_tape/layers_2_1/self_attn_1/MatMul_1/MatMul", "attention"),
    ("layers_0_1/self_attn_1/q_a_proj_1/Tensordot/MatMul", "attention"),
    ("layers_0_1/self_attn_1/q_a_layernorm_1/mul", "rmsnorm"),
    ("gradient_tape/layers_1_1/post_attention_layernorm_1/Rsqrt/RsqrtGrad", "rmsnorm"),
    ("norm_1/mul_1", "rmsnorm"),
    ("layers_1_1/self_attn_1/rope/concat", "rope"),
    ("rope/Cos", "rope"),
    ("layers_1_1/mlp_1/router/TopKV2", "moe_router"),
    ("gradient_tape/layers_1_1/mlp_1/router/MatMul/MatMul", "moe_router"),
    ("layers_1_1/mlp_1/routed_experts/MatMul_9", "moe_routed"),
    ("gradient_tape/layers_3_1/mlp_1/routed_experts/UnsortedSegmentSum", "moe_routed"),
    ("layers_1_1/mlp_1/shared_experts_1/gate_proj_1/Tensordot/MatMul", "moe_shared"),
    ("layers_1_1/mlp_1/Reshape_1", "moe_other"),
    ("layers_0_1/mlp_1/gate_proj_1/Tensordot/MatMul", "dense_mlp"),
    ("gradient_tape/layers_0_1/mlp_1/mul_1/Mul", "dense_mlp"),
    ("mtp_0_1/block_1/self_attn_1/transpose_1", "mtp"),
    ("gradient_tape/mtp_0_1/block_1/mlp_1/routed_experts/MatMul", "mtp"),
    ("mtp_loss/SparseSoftmaxCrossEntropyWithLogits/LogSoftmax", "mtp"),
    ("aux_loss/Mean", "aux_loss"),
    ("embed_tokens_1/GatherV2", "embedding"),
    ("lm_head_1/Tensordot/MatMul", "lm_head_loss"),
    ("gradient_tape/lm_head_3/Tensordot/MatMul/MatMul_1", "lm_head_loss"),
    ("lm_loss/SparseSoftmaxCrossEntropyWithLogits/LogSoftmax", "lm_head_loss"),
    ("SparseSoftmaxCrossEntropyWithLogits_1/LogSoftmax", "lm_head_loss"),
    ("cond/then/_0/cond/adamw/Sub_50", "optimizer"),
    ("global_norm/stack", "optimizer"),
    ("AddN_68/inputs_2", "other"),
    ("Sigmoid_27", "other"),
    # the cached (decode) path, scoped with the layers' own names
    ("layers_3/self_attn/einsum_1/Einsum", "attention"),
    ("layers_3/self_attn/TensorScatterUpdate", "attention"),
    ("layers_4/mlp_1/routed_experts/GatherV2", "moe_routed"),
    ("layers_0/mlp_1/down_proj_1/Tensordot/MatMul", "dense_mlp"),
])
def test_component_of(name, want):
    assert pm.component_of(name, dense_layers=frozenset({0})) == want


def test_component_of_dense_layers_decide_mlp_kind():
    name = "layers_2_1/mlp_1/mul_1"
    assert pm.component_of(name, frozenset({0})) == "moe_other"
    assert pm.component_of(name, frozenset({0, 2})) == "dense_mlp"
    # layers_12 is not layers_1
    assert pm.component_of("layers_12_1/mlp_1/mul", frozenset({1})) == "moe_other"


def _xspace(events, plane="/host:CPU"):
    """An XSpace with one plane; events: [(line, name, display name, offset ps, duration ps)]."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    xs = xplane_pb2.XSpace()
    p = xs.planes.add()
    p.name = plane
    ids, lines = {}, {}
    for line, name, disp, off, dur in events:
        if (name, disp) not in ids:
            i = len(ids) + 1
            ids[(name, disp)] = i
            p.event_metadata[i].id = i
            p.event_metadata[i].name = name
            p.event_metadata[i].display_name = disp
        if line not in lines:
            lines[line] = p.lines.add()
            lines[line].name = line
        ev = lines[line].events.add()
        ev.metadata_id, ev.offset_ps, ev.duration_ps = ids[(name, disp)], off, dur
    return xs


def test_op_records_from_xspace():
    xs = _xspace([
        ("tf_Compute/1", "ExecutorState::Process", "", 0, 1000),          # not an op
        ("tf_Compute/1", "layers_0_1/mlp_1/MatMul:_MklMatMul", "_MklMatMul", 100, 500),
        ("tf_Compute/1", "ParallelFor", "", 150, 300),                     # the op's own work
        ("tf_Compute/1", "cond:StatelessIf", "StatelessIf", 700, 250),
        ("tf_Compute/1", "cond/then/_0/cond/adamw/Sub_1:Sub", "Sub", 720, 200),
        ("tf_Compute/2", "layers_0_1/mlp_1/MatMul:_MklMatMul", "_MklMatMul", 0, 40),
        ("python", "EagerLocalExecute: __inference_step_fn_1", "", 0, 5000),
        ("python", "Mul:Mul", "Mul", 10, 30),                              # an eager op
    ])
    recs = pm.op_records(xs)
    assert sorted(recs) == sorted([
        ("layers_0_1/mlp_1/MatMul", "_MklMatMul", 500),
        ("cond", "StatelessIf", 50),
        ("cond/then/_0/cond/adamw/Sub_1", "Sub", 200),
        ("layers_0_1/mlp_1/MatMul", "_MklMatMul", 40),
        ("Mul", "Mul", 30)])
    assert pm.op_records(xs, plane_name="/device:GPU:0") == []


def test_summarize_tables():
    recs = [("layers_1_1/self_attn_1/MatMul", "_MklBatchMatMulV2", 6_000_000_000),    # 6 ms
            ("layers_0_1/mlp_1/gate_proj_1/Tensordot/MatMul", "_MklMatMul", 2_000_000_000),
            ("lm_head_1/Tensordot/MatMul", "_MklMatMul", 1_000_000_000),
            ("Sigmoid_3", "Sigmoid", 500_000_000),
            ("layers_1_1/mlp_1/routed_experts/x", "SeeklineMoeExperts", 500_000_000)]
    s = pm.summarize(recs, units=2, unit="step", dense_layers=frozenset({0}), top=2)
    assert s["op_ms_per_unit"] == pytest.approx(5.0)                  # 10 ms over 2 steps
    assert list(s["op_types"]) == ["BatchMatMulV2", "MatMul", "(other types)"]
    assert s["op_types"]["MatMul"]["ms_per_unit"] == pytest.approx(1.5)
    assert s["op_types"]["MatMul"]["share"] == pytest.approx(0.3)
    assert s["op_types"]["MatMul"]["ops_per_unit"] == pytest.approx(1.0)
    assert s["op_types"]["(other types)"]["share"] == pytest.approx(0.1)
    assert s["custom_op_types"]["SeeklineMoeExperts"]["ms_per_unit"] == pytest.approx(0.25)
    c = s["components"]
    assert list(c) == list(pm.COMPONENTS)
    assert c["attention"]["share"] == pytest.approx(0.6)
    assert c["dense_mlp"]["ms_per_unit"] == pytest.approx(1.0)
    assert c["lm_head_loss"]["share"] == pytest.approx(0.1)
    assert c["moe_routed"]["share"] == pytest.approx(0.05)
    assert c["other"]["share"] == pytest.approx(0.05)
    assert sum(r["share"] for r in c.values()) == pytest.approx(1.0)
    pairs = s["top_component_op_types"]
    assert (pairs[0]["component"], pairs[0]["op_type"]) == ("attention", "BatchMatMulV2")
    assert (pairs[1]["component"], pairs[1]["op_type"]) == ("dense_mlp", "MatMul")
    assert pairs[1]["share"] == pytest.approx(0.2) and len(pairs) == 2     # top=2
    text = pm.format_tables("train", s)
    assert "BatchMatMulV2" in text and "attention (MLA)" in text and "60.0%" in text
    md = pm.markdown_tables("train", s)
    assert "| attention (MLA) | 3.000 | 60.0% |" in md


def test_scoped_model_names_ops_and_restores():
    import tensorflow as tf

    from model.layers.moe import MoE
    orig = MoE.__dict__["router"]
    with pm.scoped_model() as patched:
        assert any("MoE.router -> router/" in p for p in patched)
        assert MoE.__dict__["router"] is not orig

        @tf.function
        def f(x):
            from model.layers import mla
            return mla.apply_rope(x, tf.ones([1, 2, 2]), tf.zeros([1, 2, 2]), True)
        g = f.get_concrete_function(tf.TensorSpec([1, 2, 4])).graph
        assert any(op.name.startswith("rope/") for op in g.get_operations())
    assert MoE.__dict__["router"] is orig
