"""Gradients of the custom ops, registered once when the library loads (model.ops.library).

SeeklineGroupedMatmul (y = x·w[g] per group, or x·w[g]^T with transpose_w):
  dx = GM(dy, w, transpose_w = not transpose_w)
  dw = WGrad(x, dy) (K, N)      or  WGrad(dy, x) (N, K) when transpose_w
SeeklineRmsNorm: SeeklineRmsNormGrad(dy, x, w) -> (dx, dw).
SeeklineAttention (o, lse): SeeklineAttentionGrad(q, k, v, bias, o, lse, do, dlse) -> (dq, dk, dv);
  no gradient for the bias (a mask).
SeeklineSoftmaxXent (loss, lse): SeeklineSoftmaxXentGrad(logits, labels, lse, dloss, dlse) -> dlogits;
  no gradient for the labels.
SeeklineRouteTopK: integer expert ids, no gradient.
SeeklineSwiglu (h = silu(g) * u): SeeklineSwigluGrad(dh, g, u) -> (dg, du).
SeeklineRope (a rotation, linear in x): dx = SeeklineRope(dy, cos, sin, inverse = not inverse);
  no gradient for cos / sin (functions of the positions).
SeeklineApplyAdamW: an optimizer update, never differentiated.
SeeklineMoeCombine (y[n] = Σ_k w[n,k]·ys[pos[n,k]]): SeeklineMoeCombineGrad(dy, ys, w, pos) -> (dys, dw);
  no gradient for pos.
group_sizes is an integer input: no gradient.
"""
from __future__ import annotations

import tensorflow as tf

_registered = False


def register(lib) -> None:
    """lib: the loaded op module (called by model.ops.library under its lock)."""
    global _registered
    if _registered:
        return

    @tf.RegisterGradient("SeeklineGroupedMatmul")
    def _grouped_matmul_grad(op, dy):
        x, w, sizes = op.inputs
        t = op.get_attr("transpose_w")
        dx = lib.seekline_grouped_matmul(dy, w, sizes, transpose_w=not t)          # (M, K)
        dw = lib.seekline_grouped_matmul_w_grad(dy, x, sizes) if t else \
            lib.seekline_grouped_matmul_w_grad(x, dy, sizes)                        # (G, ·, ·) like w
        return dx, dw, None

    @tf.RegisterGradient("SeeklineRmsNorm")
    def _rms_norm_grad(op, dy):
        x, w = op.inputs
        dx, dw = lib.seekline_rms_norm_grad(dy, x, w, eps=op.get_attr("eps"))
        return dx, dw

    @tf.RegisterGradient("SeeklineAttention")
    def _attention_grad(op, do, dlse):
        q, k, v, bias = op.inputs
        o, lse = op.outputs
        if dlse is None:                   # lse unused (the wrapper returns o only)
            dlse = tf.zeros_like(lse)
        dq, dk, dv = lib.seekline_attention_grad(q, k, v, bias, o, lse, do, dlse, scale=op.get_attr("scale"))
        return dq, dk, dv, None

    @tf.RegisterGradient("SeeklineSoftmaxXent")
    def _softmax_xent_grad(op, dloss, dlse):
        logits, labels = op.inputs
        lse = op.outputs[1]
        dloss = tf.zeros_like(lse) if dloss is None else dloss
        dlse = tf.zeros_like(lse) if dlse is None else dlse
        return lib.seekline_softmax_xent_grad(logits, labels, lse, dloss, dlse), None

    @tf.RegisterGradient("SeeklineSwiglu")
    def _swiglu_grad(op, dh):
        g, u = op.inputs
        return lib.seekline_swiglu_grad(dh, g, u)

    @tf.RegisterGradient("SeeklineRope")
    def _rope_grad(op, dy):
        _, cos, sin = op.inputs
        dx = lib.seekline_rope(dy, cos, sin, offset=op.get_attr("offset"),
                               interleaved=op.get_attr("interleaved"), inverse=not op.get_attr("inverse"))
        return dx, None, None

    @tf.RegisterGradient("SeeklineMoeCombine")
    def _moe_combine_grad(op, dy):
        ys, w, pos = op.inputs
        dys, dw = lib.seekline_moe_combine_grad(dy, ys, w, pos)
        return dys, dw, None

    tf.no_gradient("SeeklineRouteTopK")    # expert ids: the router's gradient flows through the gathered weights

    _registered = True
