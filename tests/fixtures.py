"""Factories that config files in the tests name as `fixtures:...`; they run inside worker processes."""

import collections
import mmap
import os
import signal
import sys
import time

import torch
from torch import nn


class _FailInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (fake, in backward)")


class Trap(nn.Module):
    """A linear classifier that misbehaves once the batch reaches `at`: raises OOM, dies, hangs, NaNs
    (in its output, or only in its gradients) or holds `shared_bytes` of shared memory.

    With `rank`, only that rank of a distributed probe misbehaves.
    """

    def __init__(self, features: int = 8, classes: int = 4, at: int = 1 << 30, how: str = "oom", rank: int | None = None,
                 shared_bytes: int = 0):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.at, self.how, self.rank, self.shared_bytes = at, how, rank, shared_bytes
        self.shared = None

    def forward(self, x):
        if self.rank is not None and torch.distributed.get_rank() != self.rank:
            return self.linear(x)
        if x.shape[0] >= self.at:
            if self.how == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
            if self.how == "onednn":
                raise RuntimeError("could not create a primitive")
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.how == "hang":
                time.sleep(3600)
            if self.how == "error":
                raise ValueError("a bug in the model")
            if self.how == "escape":  # a message that would clear the terminal it is shown on
                raise ValueError("\x1b[2Ja bug in the model")
            if self.how == "nan":
                return self.linear(x) * float("nan")
            if self.how == "backward_oom":
                return _FailInBackward.apply(self.linear(x))
            if self.how == "nan_grad":  # a finite loss whose gradients are not
                out = self.linear(x)
                if out.requires_grad:  # not in set-up's look at the shapes, under no_grad
                    out.register_hook(lambda grad: grad * float("nan"))
                return torch.nan_to_num(out)  # the weights go NaN; what they give stays finite
            if self.how == "shared" and self.shared is None:  # held, as a buffer in shared memory would be
                self.shared = mmap.mmap(-1, self.shared_bytes)
                torch.frombuffer(self.shared, dtype=torch.uint8).fill_(1)
        return self.linear(x)


def raises(**kwargs):
    raise ValueError("factory is broken")


def crashes(how: str = "segv"):
    """A factory that takes its process down with it, leaving no exception behind."""
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "exit":
        os._exit(7)
    if how == "bad_alloc":  # as C++ code whose allocation failed under a memory cap ends
        print("terminate called after throwing an instance of 'std::bad_alloc'", file=sys.stderr, flush=True)
        os.abort()
    if how == "base":
        raise Stray("stray")
    raise KeyboardInterrupt  # raised by the code itself: a worker ignores Ctrl-C


class Stray(BaseException):
    """Raised past `except Exception`, as some libraries' cancellations are."""


def hangs(**kwargs):
    """A factory that never returns (a download or a lock that waits forever)."""
    time.sleep(3600)


def broken_on_rank(rank: int = 1):
    """Builds a Trap on every rank but `rank` (a missing file on one node, say)."""
    if torch.distributed.get_rank() == rank:
        raise ValueError("factory is broken on this rank")
    return Trap()


def not_a_model(**kwargs):
    return 42


class Stream(torch.utils.data.IterableDataset):
    """A stream with a length: it has `__getitem__` (Dataset's, which raises) but no items by index."""

    def __len__(self):
        return 100

    def __iter__(self):
        return iter([(torch.zeros(8), 0)] * 100)


def no_parameters(**kwargs):
    return nn.ReLU()


def broken_loss(output, target):
    raise KeyError("logits")


def elsewhere_optimizer(params):
    """An optimizer of parameters that are not the model's: training would never move the model."""
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


def named_optimizer(params):
    return "sgd"


def summed_cross_entropy(output, target):
    return nn.functional.cross_entropy(output, target, reduction="sum")


def detached_loss(output, target):
    """A loss cut off from the model: there is nothing to backpropagate."""
    return torch.tensor(1.0)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 100, features: int = 8, classes: int = 4):
        self.x = torch.randn(n, features)
        self.y = torch.randint(0, classes, (n,))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class NamedLabels(Pairs):
    """Labels as text, as a folder of CSVs gives them."""

    def __getitem__(self, i):
        return self.x[i], ("cat", "dog", "bird", "fish")[int(self.y[i])]


class LateLabel(Pairs):
    """Pairs whose labels are in range except item `at`'s."""

    def __init__(self, n: int = 300, at: int = 200, label: int = 7):
        super().__init__(n)
        self.y[at] = label


class Auxiliary(nn.Module):
    """Like Inception: (logits, aux_logits) while training, the logits alone in eval mode."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.main, self.aux = nn.Linear(features, classes), nn.Linear(features, classes)

    def forward(self, x):
        return {"logits": self.main(x), "aux_logits": self.aux(x)} if self.training else self.main(x)


class PerSampleLoss(nn.Module):
    """Returns its loss left per sample (`reduction="none"`): no scalar to train on."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x, labels):
        return {"loss": nn.functional.cross_entropy(self.linear(x), labels, reduction="none")}


class Tempered(nn.Module):
    """Needs a keyword argument that no batch holds."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x, *, temperature):
        return self.linear(x) / temperature


class Flaky(Trap):
    """Fits up to `fresh_limit` in its first trial; a worker that ran before fits 8 more (fake OOM)."""

    def __init__(self, fresh_limit: int = 20):
        super().__init__()
        self.fresh_limit, self.calls = fresh_limit, 0

    def forward(self, x):
        if self.training and torch.is_grad_enabled():  # a training step, not the set-up's check
            self.calls += 1
        # The first trial's steps in this process fit up to fresh_limit, later ones 8 more.
        limit = self.fresh_limit + (8 if self.calls > 1 else 0)
        if x.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 MiB (fake)")
        return self.linear(x)


def normed_mlp(features: int = 8, classes: int = 4) -> nn.Module:
    """BatchNorm1d on features: one value per channel at a batch of 1, which torch will not train on."""
    return nn.Sequential(nn.Linear(features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, classes))


def segmenter(channels: int = 2, classes: int = 3) -> nn.Module:
    """Per-pixel classes in torch's own layout: (batch, classes, height, width)."""
    return nn.Conv2d(channels, classes, 3, padding=1)


class Sentences(torch.utils.data.Dataset):
    """Token sequences of lengths 5..longest, with next-token targets; with `log`, each read
    appends "pid index" to that file."""

    def __init__(self, n: int = 30, longest: int = 40, vocab: int = 64, log: str | None = None):
        g = torch.Generator().manual_seed(0)
        lengths = torch.linspace(5, longest, n).round().long().tolist()
        self.items = [torch.randint(0, vocab, (int(length),), generator=g) for length in lengths]
        self.log = log

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {i}\n")
        return self.items[i], self.items[i]


class NormedLog(nn.Module):
    """`normed_mlp` that appends the batch size of every training-mode forward to `out`, and whether
    oneDNN was on: which steps a worker ran besides the trials, and how."""

    def __init__(self, out: str):
        super().__init__()
        self.net, self.out = normed_mlp(), out

    def forward(self, x):
        if self.training:
            with open(self.out, "a") as f:
                f.write(f"{len(x)} {torch.backends.mkldnn.enabled}\n")
        return self.net(x)


class DataMeter(nn.Module):
    """A tiny classifier that writes its process's data size (`VmData`, what RLIMIT_DATA counts) to
    `out` at every step: how much a worker holds before any model of size."""

    def __init__(self, out: str, features: int = 8, classes: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.out = out

    def forward(self, x):
        with open("/proc/self/status") as f:
            data_kib = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
        with open(self.out, "a") as f:
            f.write(f"{data_kib * 1024}\n")
        return self.linear(x)


def exits(**kwargs):
    """A factory that ends the process the way a script does."""
    raise SystemExit(3)


def exiting_step(model, batch, optimizer):
    raise SystemExit(0)


def interrupting_loss(output, target):
    raise KeyboardInterrupt


class ExitingItems(Pairs):
    def __getitem__(self, i):
        raise SystemExit("no more items")


class ExitingForward(nn.Linear):
    def __init__(self):
        super().__init__(8, 4)

    def forward(self, x):
        raise SystemExit(1)


class NegativeLength(torch.utils.data.Dataset):
    """A dataset whose length torch's len() refuses."""

    def __len__(self):
        return -1

    def __getitem__(self, i):
        return torch.zeros(8), 0


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str fails")


def unprintable(**kwargs):
    """A factory whose exception cannot say what it is."""
    raise _Unprintable()


def long_winded(**kwargs):
    raise ValueError("x" * 100_000)


class Nones(torch.utils.data.Dataset):
    """Items no batch can be made of."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return None


class Mixed(torch.utils.data.Dataset):
    """Items of two shapes: a dict and a tensor, by turns."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return ({"x": torch.zeros(8)}, 0) if i % 2 else (torch.zeros(8), 0)


def chatty(**kwargs):
    """A factory that prints, as code being debugged does."""
    print("hello from the model factory")
    return Trap(**kwargs)


class TokenIds(torch.utils.data.Dataset):
    """Sequences of `length` token ids below `high`, each its own target (a language model's data)."""

    def __init__(self, length: int = 16, high: int = 100):
        self.length, self.high = length, high

    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.randint(0, self.high, (self.length,), generator=torch.Generator().manual_seed(i))
        return ids, ids


class Inference(nn.Module):
    """A model whose forward runs without gradients, as an evaluation loop's does."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x):
        with torch.no_grad():
            return self.linear(x)


def on_meta(features: int = 8, classes: int = 4):
    """A model built for its shapes only, as init_empty_weights builds one."""
    with torch.device("meta"):
        return nn.Linear(features, classes)


class MetaItems(Pairs):
    """Items whose inputs have a shape but no data."""

    def __getitem__(self, i):
        return torch.empty(self.x.shape[1], device="meta"), self.y[i]


class BreaksAt(Pairs):
    """Pairs whose item `at` raises: past the items read at set-up, the first trial to reach it finds it."""

    def __init__(self, n: int = 10010, at: int = 10005):
        super().__init__(n)
        self.at = at

    def __getitem__(self, i):
        if i == self.at:
            raise ValueError(f"item {i} is corrupt")
        return super().__getitem__(i)


class SlowItems(Pairs):
    """Pairs whose items take `delay` seconds each, past `after`: a dataset that reads slowly."""

    def __init__(self, n: int = 100, after: int = 1, delay: float = 3600.0):
        super().__init__(n)
        self.after, self.delay = after, delay

    def __getitem__(self, i):
        if i >= self.after:
            time.sleep(self.delay)
        return super().__getitem__(i)


class HangsAbove(Trap):
    """A model whose forward never returns for a batch above `above`."""

    def __init__(self, above: int = 0):
        super().__init__()
        self.above = above

    def forward(self, x):
        if x.shape[0] > self.above:
            time.sleep(3600)
        return self.linear(x)


def labelled_cross_entropy(output, target):
    """Cross-entropy written out as one's own loss: it takes class labels only."""
    return nn.functional.cross_entropy(output, target)


class Linear(nn.Linear):
    """nn.Linear with the features and classes the configs' data has, so a config can name it bare."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__(features, classes)


class Broken(Linear):
    """A model whose class redefines one of nn.Module's own methods (`method`) so that it raises."""

    def __init__(self, method: str, features: int = 8, classes: int = 4):
        super().__init__(features, classes)
        self.method = method

    def _fail(self, name: str) -> None:
        if self.__dict__.get("method") == name:
            raise RuntimeError(f"{name} is broken here")

    def train(self, mode: bool = True):
        self._fail("train")
        return super().train(mode)

    def to(self, *args, **kwargs):
        self._fail("to")
        return super().to(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        self._fail("parameters")
        return super().parameters(recurse)


class SparseBag(nn.Module):
    """Token ids into an embedding with sparse gradients, then a linear layer."""

    def __init__(self, vocab: int = 50, classes: int = 4):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, 8, sparse=True)
        self.head = nn.Linear(8, classes)

    def forward(self, ids):
        return self.head(self.bag(ids))


class NoWorkers(Pairs):
    """Pairs that cannot be read in a DataLoader's worker process (a handle opened in the parent)."""

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            raise OSError("the file handle was opened in another process")
        return super().__getitem__(i)


class Reshaped(Pairs):
    """Pairs, except that items from `at` on are dicts: a dataset whose format changes partway."""

    def __init__(self, n: int = 100, at: int = 50):
        super().__init__(n)
        self.at = at

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return {"x": x, "y": y} if i >= self.at else (x, y)


class OwnLoss(nn.Module):
    """Given its labels, returns its own loss beside the logits, as Hugging Face's models do."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        return {"logits": logits, **({} if labels is None else {"loss": nn.functional.cross_entropy(logits, labels)})}


class SmallMaps(nn.Module):
    """A segmentation model with its own loss whose maps are a quarter of its labels' size a side
    (it upsamples them to score), as Hugging Face's SegFormer does: more classes than a map's
    width read as the last dimension would not say how many; or, with `regression`, one
    output scoring integer labels as numbers (`problem_type: regression`)."""

    def __init__(self, classes: int = 3, regression: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 1 if regression else classes, 4, stride=4)
        self.regression = regression

    def forward(self, pixels, labels=None):
        logits = self.conv(pixels)
        if self.regression:
            logits = logits.mean((2, 3))
            loss = None if labels is None else nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        else:
            loss = None if labels is None else nn.functional.cross_entropy(
                nn.functional.interpolate(logits, size=labels.shape[-2:]), labels)
        return {"logits": logits, **({} if loss is None else {"loss": loss})}


class Recurrent(nn.Module):
    """An LSTM over a sequence of feature vectors, classified from its last step."""

    def __init__(self, features: int = 4, classes: int = 3):
        super().__init__()
        self.lstm = nn.LSTM(features, 8, batch_first=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def half_linear(features: int = 8, classes: int = 4) -> nn.Module:
    """Parameters held in float16, as a model converted with .half() holds them."""
    return nn.Linear(features, classes).half()


class OnCuda(Linear):
    """Moves its input to a GPU itself, as code written for one machine does."""

    def forward(self, x):
        return super().forward(x.to("cuda")).cpu()


Out = collections.namedtuple("Out", ["logits", "features"])


class Named(Linear):
    """Returns a NamedTuple of its logits and features."""

    def forward(self, x):
        return Out(super().forward(x), x)


class TwoOut(Linear):
    """Returns a plain tuple: its inputs and its logits."""

    def forward(self, x):
        return x, super().forward(x)


class Keyed(Pairs):
    """Dict items whose target is a key beside the inputs."""

    def __getitem__(self, i):
        return {"input": self.x[i], "y": self.y[i]}


class Embedded(nn.Module):
    """Token ids through an embedding of `vocab` rows, averaged, into a linear head."""

    def __init__(self, vocab: int = 10, classes: int = 4):
        super().__init__()
        self.embedding, self.head = nn.Embedding(vocab, 8), nn.Linear(8, classes)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(1))


class Triples(Pairs):
    """(a, b, target) items: two inputs."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x, 2 * x, y


class TakesOne(Linear):
    """Takes its two inputs as one argument, a pair."""

    def forward(self, inputs):
        a, b = inputs
        return super().forward(a + b)


class UnusedHead(nn.Module):
    """A backbone and a head of one's own that skips one of its layers (BERT's pooler under a [CLS]
    head): a parameter that gets no gradient, which DDP must be told of."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.body = nn.Linear(features, classes)
        self.pooler = nn.Linear(features, features)

    def forward(self, x):
        return self.body(x)
