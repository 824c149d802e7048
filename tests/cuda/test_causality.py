"""common.evaluate's causality probe on the reference model: the canvas's own loss_fn passes, and the canvas with
its causal mask removed is rejected before it is scored."""

import torch
from cudakit import TRAIN_PY
from probekit import CONFIG, check_probe, exercised, leaky_canvas

CAUSAL = "F.scaled_dot_product_attention(q, k, v, is_causal=True)"


def canvas_loss_fn(train, weights):
    """main()'s loss_fn on the CPU."""
    model = train.build_model(train.GPTConfig(**CONFIG))
    train.import_weights(model, weights)

    def loss_fn(inputs, targets):
        with torch.no_grad():
            return model(torch.from_numpy(inputs).long(), torch.from_numpy(targets).long()).float().numpy()
    return loss_fn


def test_the_probe_passes_the_canvas_and_rejects_it_without_its_causal_mask(train, record_file, tmp_path):
    leaky = leaky_canvas(TRAIN_PY, CAUSAL, CAUSAL.replace("is_causal=True", "is_causal=False"), tmp_path)
    weights = exercised(train.export_weights(train.build_model(train.GPTConfig(**CONFIG))))
    check_probe(canvas_loss_fn(train, weights), canvas_loss_fn(leaky, weights), record_file)
