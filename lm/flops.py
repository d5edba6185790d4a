"""FLOP counts of the word-level models' matmuls, for bench.py's achieved FLOP/s and its bounds:
FLOPs per token of the forward, the shapes of one training step's matmuls, and the training
FLOP/s that those shapes allow at given speeds."""


def model_flops(mcfg, cfg, decoder_in, vocab_size):
    """(forward FLOPs per token, gemm_shapes or None) of a model config mcfg trained at cfg's batch
    size and bptt. The LSTMs' as below; the QRNN's convolutions 2 * 3h * (window * i) per layer;
    the Transformer's weights 2 * (4d^2 + 2 d nhid) per block and its attention 4 * bptt * d (the
    full score matrix and its product with the values, as the masked kernel computes them), with
    no shapes, since attention's batched matmuls are no single GEMM. Each with the decoder."""
    decoder = 2 * decoder_in * vocab_size
    if mcfg.model == "transformer":
        d = mcfg.emsize
        return mcfg.nlayers * (2 * (4 * d * d + 2 * d * mcfg.nhid) + 4 * cfg["bptt"] * d) + decoder, None
    sizes = mcfg.layer_sizes()
    if mcfg.model != "qrnn":
        return flops_per_token(sizes, decoder_in, vocab_size), gemm_shapes(cfg, sizes, decoder_in, vocab_size)
    tokens, shapes = cfg["batch_size"] * cfg["bptt"], {}
    for layer, ((i, h), w) in enumerate(zip(sizes, mcfg.windows(), strict=True)):
        for what, mkn in (("input", (tokens, w * i, 3 * h)), ("input's gradient", (tokens, 3 * h, w * i)),
                          ("weight's gradient", (3 * h, tokens, w * i))):
            shapes[f"layer {layer} {what} ({'x'.join(map(str, mkn))})"] = (mkn, tokens)
    shapes.update(decoder_shapes(tokens, decoder_in, vocab_size))
    return sum(6 * h * w * i for (i, h), w in zip(sizes, mcfg.windows(), strict=True)) + decoder, shapes


def flops_per_token(sizes, decoder_in, vocab_size):
    """Forward matmul FLOPs per token: the LSTM layers' gates (2 * 4h * (i + h) each) and the
    decoder (2 * d * vocab). Elementwise work and the embedding lookup are not counted."""
    return sum(8 * h * (i + h) for i, h in sizes) + 2 * decoder_in * vocab_size


def gemm_shapes(cfg, sizes, decoder_in, vocab_size):
    """name -> ((m, k, n), rows) of the matmuls of one training step, forward and backward, with
    their operands as stored: each layer's input projection over the batch with its input and
    weight gradients, its recurrent step with the step's state gradient and the recurrent weight's
    gradient (one matmul over all steps, as our recurrence computes it), and the decoder's logits
    with both gradients. `rows` is the dimension that counts tokens (all of the batch's, or one
    step's batch), so that 2 m k n / rows is the shape's FLOPs per token."""
    tokens, batch = cfg["batch_size"] * cfg["bptt"], cfg["batch_size"]
    shapes = {}
    for layer, (i, h) in enumerate(sizes):
        g = 4 * h
        for what, mkn, rows in (("input", (tokens, i, g), tokens), ("input's gradient", (tokens, g, i), tokens),
                                ("input weight's gradient", (g, tokens, i), tokens), ("step", (batch, h, g), batch),
                                ("step's gradient", (batch, g, h), batch),
                                ("recurrent weight's gradient", (g, tokens, h), tokens)):
            shapes[f"layer {layer} {what} ({'x'.join(map(str, mkn))})"] = (mkn, rows)
    return {**shapes, **decoder_shapes(tokens, decoder_in, vocab_size)}


def decoder_shapes(tokens, d, v):
    """The decoder's logits and both their gradients, in gemm_shapes' form."""
    return {f"decoder {what} ({'x'.join(map(str, mkn))})": (mkn, tokens)
            for what, mkn in (("logits", (tokens, d, v)), ("input's gradient", (tokens, v, d)),
                              ("weight's gradient", (d, tokens, v)))}


def shape_bound(shapes, gflops):
    """The training FLOP/s that the model's own matmuls allow at their measured speeds (gflops, by
    name) if nothing else took any time: training FLOPs per token over the sum of each shape's
    FLOPs per token divided by its speed."""
    per_token = {name: 2 * m * k * n / rows for name, ((m, k, n), rows) in shapes.items()}
    seconds = sum(flops / (gflops[name] * 1e9) for name, flops in per_token.items())
    return sum(per_token.values()) / seconds
