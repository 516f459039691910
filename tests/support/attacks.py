"""Test-only attackers: a Flower mod around fedcmi's ClientApp that turns chosen partitions
into adversaries. Nothing of it ships in the product; ``benchmarks/attacks.py`` and the tests use it.

A spec is a list of items ``kind[=parameter]:partition`` separated by ``,``, ``;`` or blanks, e.g.
``sizelie:3``, ``scale=-5:3``, ``scale-group=a,-50:2, scale-group=a,-50:5`` (a parameter may contain a comma,
never a colon; one attack per partition). Kinds:

* ``noise``: the trained arrays are replaced by the global model plus Gaussian noise whose L2 norm, per
  parameter group, aims just under the server's relative bound: ``0.5 x multiple x`` the attacker's own honest
  update norm of that group (its best guess of the round's median; the margin because its own norm can be
  up to twice the median, and an attacker above the bound is simply rejected);
* ``count``: the sample count of every training reply is 1e9 (it would take all the weight of a
  sample-weighted mean);
* ``stats``: forged class statistics claiming the second modality is always right and the first never
  (counts kept at the attacker's real ones, so they pass the caps), to force the dominant modality;
* ``metrics``: a list where the loss belongs;
* ``sizelie``: the node claims 2**53 samples (the largest count the server accepts) at discovery (the QUERY
  reply's ``info`` num-examples) and in every training reply; its update is honest;
* ``sizelie-zero``: the same lie, and its update is zero (it sends back the global arrays it received);
* ``sizelie-scale=F``: the same lie, and its update (trained minus global) multiplied by ``F``;
* ``sizelie-stats``: the same lie, and the ``stats`` forgery with the counts scaled up to the claimed size
  (as many whole multiples of its real counts as fit in 2**53), so the forgery carries the lie's weight;
* ``scale=F``: no lie; the update of every floating array multiplied by ``F`` (``F`` < 0 pushes the model back);
* ``scale-group=G,F``: only the update of parameter group ``G`` (``a``, ``b`` or ``shared``, as
  ``fedcmi.modalities.group_of`` names them) multiplied by ``F``; the other groups honest;
* ``plus=C``: ``C`` added to every floating array of the update (to every element);
* ``steal=P``: an impostor. At discovery it claims partition ``P`` (another node's) with its own kind and real
  sample count; its training replies then claim ``P`` too (metrics and info), consistently, as a real
  impostor would: a reply claiming its true partition, or none (-1), would contradict what it said at
  discovery, and claiming ``P`` costs it nothing. Its update is honest (trained on its own data).

Integer buffers (BatchNorm ``num_batches_tracked``) are left as trained by every kind but ``sizelie-zero``
(which sends the global ones back, a step of 0).

The spec is read from a file on every message, so one simulation can run several scenarios in turn. With
``trace_file`` the mod also appends one line per message it sees (message type, round, partition, attack), so
a benchmark can tell afterwards which partitions were asked to train.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from fedcmi import protocol
from fedcmi.modalities import group_of
from fedcmi.npy import record_arrays

LIE = 2**53  # the sample count a size liar claims: the largest the server accepts (fedcmi.federated.screening)
GROUPS = ("a", "b", "shared")
# kind -> what its parameter is (None: it takes none)
PARAMS: dict[str, str | None] = {
    "noise": None, "count": None, "stats": None, "metrics": None,
    "sizelie": None, "sizelie-zero": None, "sizelie-stats": None, "sizelie-scale": "F",
    "scale": "F", "scale-group": "G,F", "plus": "C", "steal": "P",
}
KINDS = tuple(PARAMS)
_ITEM = re.compile(r"\s*(?P<kind>[a-z][a-z-]*)(?:=(?P<param>[^:]*))?:(?P<part>[^,;\s]*)\s*(?:[,;\s]\s*|$)")


@dataclass(frozen=True)
class Attack:
    """One partition's attack: its kind and the parameter, read (``factor`` F or C; ``group`` G; ``claim`` P)."""

    kind: str
    factor: float | None = None
    group: str | None = None
    claim: int | None = None

    @property
    def lies(self) -> bool:
        """Claims 2**53 samples at discovery and in every training reply."""
        return self.kind.startswith("sizelie")

    def __str__(self) -> str:  # the spec item without the partition
        if self.kind == "steal":
            return f"steal={self.claim}"
        if self.kind == "scale-group":
            return f"scale-group={self.group},{self.factor:g}"
        return self.kind if self.factor is None else f"{self.kind}={self.factor:g}"


def parse_attack(kind: str, param: str | None) -> Attack:
    """An :class:`Attack` from a kind and its parameter text; raises ValueError with the reason."""
    if kind not in PARAMS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    want = PARAMS[kind]
    if want is None:
        if param is not None:
            raise ValueError(f"{kind} takes no parameter")
        return Attack(kind)
    if not param:
        raise ValueError(f"{kind} needs a parameter: {kind}={want}:partition")
    try:
        if kind == "steal":
            return Attack(kind, claim=int(param))
        if kind == "scale-group":
            group, sep, factor = param.partition(",")
            if not sep or group.strip() not in GROUPS:
                raise ValueError(f"expected G,F with G one of {', '.join(GROUPS)}")
            return Attack(kind, factor=_finite(factor), group=group.strip())
        return Attack(kind, factor=_finite(param))
    except ValueError as exc:
        raise ValueError(f"bad parameter {param!r} ({exc})") from None


def _finite(text: str) -> float:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError("must be finite")
    return value


def parse(spec: str) -> dict[int, Attack]:
    """partition id -> attack, from a spec (see the module's doc); raises ValueError naming the bad item."""
    out: dict[int, Attack] = {}
    pos, spec = 0, spec.strip()
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if not m:
            bad = re.split(r"[,;\s]", spec[pos:].lstrip(",; \t\n"), maxsplit=1)[0]
            raise ValueError(f"{bad!r}: expected kind[=parameter]:partition with kind one of {', '.join(KINDS)}")
        item = m.group(0).strip().rstrip(",;").strip()
        try:
            part = int(m.group("part"))
        except ValueError:
            raise ValueError(f"{item!r}: the partition must be an integer") from None
        try:
            atk = parse_attack(m.group("kind"), m.group("param"))
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}") from None
        if part in out:
            raise ValueError(f"{item!r}: partition {part} already attacks ({out[part]})")
        out[part] = atk
        pos = m.end()
    return out


def spec_of(attacks: dict[int, Attack]) -> str:
    """The spec text of ``parse``'s result (partition order): ``parse(spec_of(x)) == x``."""
    return ", ".join(f"{a}:{p}" for p, a in sorted(attacks.items()))


def as_attack(kind: str | Attack) -> Attack:
    """An :class:`Attack` from one, or from a spec item without its partition (``"scale=-5"``)."""
    if isinstance(kind, Attack):
        return kind
    name, sep, param = kind.partition("=")
    return parse_attack(name, param if sep else None)


# --- the transformations ------------------------------------------------------------------------------------
def describe(content, atk: str | Attack) -> None:  # noqa: ANN001 - a Flower RecordDict, changed in place
    """Turn an honest discovery (QUERY) reply into the attack's claim: a size lie, or another partition id."""
    atk = as_attack(atk)
    info = content[protocol.INFO]
    if atk.lies:
        info[protocol.NUM_EXAMPLES] = LIE
    if atk.kind == "steal":
        info[protocol.PARTITION_ID] = atk.claim


def transformed(arrays: dict[str, np.ndarray], glob: dict[str, np.ndarray],
                atk: Attack) -> dict[str, np.ndarray]:
    """The arrays an attacker sends for the update kinds (zero, scale, scale-group, plus), from its honestly
    trained ``arrays`` and the ``glob``al ones it received; every other kind leaves them as they are."""
    zero = atk.kind == "sizelie-zero"
    out = {}
    for k, v in arrays.items():
        if zero:
            out[k] = np.array(glob[k], dtype=v.dtype)
        elif not np.issubdtype(v.dtype, np.floating):
            out[k] = v
        elif atk.kind in ("scale", "sizelie-scale") or (atk.kind == "scale-group" and group_of(k) == atk.group):
            g = glob[k].astype(np.float64)
            out[k] = (g + atk.factor * (v.astype(np.float64) - g)).astype(v.dtype)
        elif atk.kind == "plus":
            out[k] = (v.astype(np.float64) + atk.factor).astype(v.dtype)
        else:
            out[k] = v
    return out


def attack(content, kind: str | Attack, sent: ArrayRecord, multiple: float, seed: int) -> None:  # noqa: ANN001
    """Turn an honest training reply (``content``, changed in place) into the attack ``kind`` (an
    :class:`Attack` or a spec item without its partition)."""
    atk = as_attack(kind)
    if atk.kind == "noise":
        rng = np.random.default_rng(seed)
        arrays = record_arrays(content[protocol.ARRAYS])
        glob = record_arrays(sent, arrays)
        groups: dict[str, list[str]] = {}
        for k, v in arrays.items():
            if np.issubdtype(v.dtype, np.floating):
                groups.setdefault(group_of(k), []).append(k)
        for keys in groups.values():
            honest = np.sqrt(sum(float(np.sum((arrays[k].astype(np.float64) - glob[k]) ** 2)) for k in keys))
            noise = {k: rng.standard_normal(arrays[k].shape) for k in keys}
            scale = 0.5 * multiple * honest / max(np.sqrt(sum(float(np.sum(n ** 2)) for n in noise.values())), 1e-12)
            for k in keys:
                arrays[k] = (glob[k] + scale * noise[k]).astype(arrays[k].dtype)
        content[protocol.ARRAYS] = ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in arrays.items()})
    elif atk.kind == "count":
        content[protocol.METRICS][protocol.NUM_EXAMPLES] = 1e9
    elif atk.kind == "metrics":
        content[protocol.METRICS]["loss"] = [1.0, 2.0]
    elif atk.kind in ("sizelie-zero", "sizelie-scale", "scale", "scale-group", "plus"):
        arrays = record_arrays(content[protocol.ARRAYS])
        new = transformed(arrays, record_arrays(sent, arrays), atk)
        content[protocol.ARRAYS] = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in new.items()})
    if atk.kind in ("stats", "sizelie-stats"):
        counts = record_arrays(content[protocol.CLASS_STATS], [protocol.COUNTS])[protocol.COUNTS]
        if atk.kind == "sizelie-stats" and counts.sum() > 0:
            counts = counts * float(LIE // int(counts.sum()))  # whole multiples: exact, and sum <= 2**53
        content[protocol.CLASS_STATS] = ArrayRecord({protocol.SUM_PA: Array(np.zeros_like(counts)),
                                                     protocol.SUM_PB: Array(counts.copy()),
                                                     protocol.COUNTS: Array(counts.copy())})
    if atk.lies:
        content[protocol.METRICS][protocol.NUM_EXAMPLES] = LIE
    if atk.kind == "steal":
        content[protocol.METRICS][protocol.PARTITION_ID] = atk.claim
        if protocol.INFO in content.config_records:
            content[protocol.INFO][protocol.PARTITION_ID] = atk.claim


# --- the mod ------------------------------------------------------------------------------------------------
def attack_mod(spec_file: str, multiple: float,
               trace_file: str | None = None) -> Callable[[Message, Context, Callable], Message]:
    """A Flower mod: the partitions named in ``spec_file`` (read per message) attack their discovery (QUERY)
    and TRAIN replies; with ``trace_file``, one line per message is appended there."""

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        mtype = msg.metadata.message_type
        if mtype not in (MessageType.TRAIN, MessageType.QUERY):
            return call_next(msg, context)
        pid = int(context.node_config["partition-id"])
        path = Path(spec_file)
        atk = parse(path.read_text()).get(pid) if path.is_file() else None
        server_round = protocol.server_round_of(msg.content)
        if trace_file:
            with open(trace_file, "a") as f:  # one short write per line (O_APPEND): lines do not interleave
                f.write(f"{mtype} round {server_round} partition {pid} attack {atk or '-'}\n")
        sent = msg.content[protocol.ARRAYS] if mtype == MessageType.TRAIN else None
        reply = call_next(msg, context)
        if atk is None or reply.has_error():
            return reply
        if mtype == MessageType.QUERY:
            describe(reply.content, atk)
        else:
            attack(reply.content, atk, sent, multiple, seed=1000 * server_round + pid)
        return reply

    return mod


def attacked_client_app(spec_file: str, multiple: float, trace_file: str | None = None):  # noqa: ANN201 - ClientApp
    from flwr.clientapp import ClientApp

    import clients.app as product

    app = ClientApp(mods=[attack_mod(spec_file, multiple, trace_file)])
    app.query()(product.describe)
    app.train()(product.train)
    app.evaluate()(product.moments)
    return app
