"""No host synchronization in the recorder's hot path, checked on the ``meta`` device.

A meta tensor has a shape and no data: every operation that would read device
values on the host (``.item()``, ``bool()``, ``.cpu()``, ``nonzero``, boolean
masks, ``unique``) raises on it. Training on meta with the recorder attached is
therefore the CPU's version of ``torch.cuda.set_sync_debug_mode("error")``: the
hooks and ``step()`` must run through, and the first read of data must be the
flush's one batched copy.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.norms import normalize
from gradscope.record import Recorder

META = torch.device("meta")


class Disc(nn.Module):
    def __init__(self, norm: str) -> None:
        super().__init__()
        self.conv = normalize(nn.Conv2d(2, 4, 3, padding=1), norm)
        self.plain = nn.Conv2d(4, 4, 4, stride=2, padding=1)
        self.fc = normalize(nn.Linear(4 * 4 * 4, 1), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.plain(F.leaky_relu(self.conv(x), 0.1)), 0.1)
        return self.fc(h.flatten(1)).squeeze(1)


class Gen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4 * 4 * 4)
        self.bn = nn.BatchNorm2d(4)
        self.deconv = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.deconv(F.relu(self.bn(self.fc(z).view(-1, 4, 4, 4)))))


class TinyTransformer(nn.Module):
    """Embedding, layer norm, packed multi-head attention and an MLP: the layouts a transformer needs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 11))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(tokens))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.mlp(h)


@pytest.mark.parametrize("norm", ["sn", "bssn"])
@pytest.mark.parametrize("every", [1, 2])
def test_a_gan_records_on_meta_without_reading_device_data(norm: str, every: int) -> None:
    torch.manual_seed(0)
    disc, gen = Disc(norm).to(META), Gen().to(META)
    opt_d, opt_g = torch.optim.SGD(disc.parameters(), lr=0.1), torch.optim.SGD(gen.parameters(), lr=0.1)
    # The default statistics (every cheap one), conv operator norms on every recorded step, input-gradient slopes.
    rec = Recorder({"D": disc, "G": gen}, every=every, operator_every=every, alerts=[],
                   flush_every=10**6).attach()
    for step in range(4):
        rec.begin(step, "d")
        real = torch.randn(4, 2, 8, 8, device=META, requires_grad=rec.collecting_slopes)
        with torch.no_grad():
            fake = gen(torch.randn(4, 3, device=META))
        out_real, out_fake = disc(real), disc(fake)
        rec.record_input_gradients("D", real, out_real)
        loss_d = F.relu(1 - out_real).mean() + F.relu(1 + out_fake).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        rec.log_scalars(step, {"loss_d": loss_d, "lr": 0.1})
        rec.step(step, "d")
        rec.begin(step, "g")
        disc.requires_grad_(False)
        loss_g = -disc(gen(torch.randn(4, 3, device=META))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        disc.requires_grad_(True)
        rec.step(step, "g")
    assert len(rec.outbox.steps) == 8 // every  # every recorded (step, phase) is waiting on the device
    with pytest.raises(NotImplementedError, match="meta"):  # the flush is the first read of the values
        rec.flush()
    rec.detach()


def test_a_transformer_records_on_meta_without_reading_device_data() -> None:
    torch.manual_seed(0)
    model = TinyTransformer().to(META)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, every=1, alerts=[], flush_every=10**6).attach()
    for step in range(3):
        tokens = torch.randint(0, 11, (2, 5), device=META)
        for _ in range(2):  # gradient accumulation over two micro-batches
            F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten()).backward()
        opt.step()
        opt.zero_grad()
        rec.step(step)
    assert len(rec.outbox.steps) == 3
    with pytest.raises(NotImplementedError, match="meta"):
        rec.flush()
    rec.detach()


def test_a_transformers_gpt2_records_on_meta_without_reading_device_data() -> None:
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).to(META).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, every=1, alerts=[], flush_every=10**6).attach()
    for step in range(2):
        tokens = torch.randint(0, 50, (2, 8), device=META)
        model(input_ids=tokens, labels=tokens).loss.backward()
        opt.step()
        opt.zero_grad()
        rec.step(step)
    assert len(rec.outbox.steps) == 2
    rec.detach()
