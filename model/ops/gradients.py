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

    tf.no_gradient("SeeklineRouteTopK")    # expert ids: the router's gradient flows through the gathered weights

    _registered = True
