"""A Sparkplug B edge node played by the third-party `pysparkplug` package, for forewarn's tests.

It publishes through a real broker, in this order, and prints one JSON object on stdout:

1. NDATA before any NBIRTH, repeated once a second until forewarn answers with a rebirth request
   (an NCMD, decoded here by pysparkplug) — this also waits out forewarn's subscription;
2. NBIRTH (seq 0, bdSeq 0) with a numeric node metric, then DBIRTH (seq 1) of one device with
   aliases 1 = temp (Double), 2 = running (Boolean), 3 = firmware (String);
3. `--hours` DDATA messages by alias (seq 2, 3, ...), one reading an hour from `--t0` (epoch ms),
   the temperature rising after hour 30;
4. a gap: three seq numbers skipped, then one DDATA — and waits for the rebirth request;
5. a DDATA naming alias 99, which no BIRTH defined — and waits for the rebirth request;
6. DDEATH of the device, then NDEATH of the node (bdSeq 0).

Output: {"ncmd": [{"topic": ..., "metrics": [{"name": ..., "value": ...}]}, ...], "last_seq": N}.
Exits 1 (with the reason on stderr) when a rebirth request does not come within the timeout.
"""

import argparse
import json
import sys
import threading
import time

import pysparkplug as spb


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--edge", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--t0", type=int, required=True)
    ap.add_argument("--hours", type=int, default=36)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    ncmds = []
    arrived = threading.Condition()

    def on_ncmd(_client, message):
        with arrived:
            ncmds.append(
                {
                    "topic": str(message.topic),
                    "metrics": [
                        {"name": m.name, "value": m.value, "datatype": int(m.datatype)}
                        for m in message.payload.metrics
                    ],
                }
            )
            arrived.notify_all()

    client = spb.Client(client_id=f"{args.group}-{args.edge}-pysparkplug")
    ncmd_topic = spb.Topic(
        message_type=spb.MessageType.NCMD, group_id=args.group, edge_node_id=args.edge
    )
    client.subscribe(ncmd_topic, spb.QoS.AT_LEAST_ONCE, on_ncmd)
    client.connect(args.host, port=args.port, blocking=False)

    def topic(kind, device=None):
        return spb.Topic(
            message_type=kind, group_id=args.group, edge_node_id=args.edge, device_id=device
        )

    def send(kind, payload, device=None):
        client.publish(
            spb.Message(
                topic=topic(kind, device), payload=payload, qos=spb.QoS.AT_LEAST_ONCE, retain=False
            ),
            include_dtypes=kind in (spb.MessageType.NBIRTH, spb.MessageType.DBIRTH),
        )

    def wait_ncmd(count, what, resend=None):
        """Waits until `count` NCMDs have arrived in all."""
        deadline = time.monotonic() + args.timeout
        with arrived:
            while len(ncmds) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    print(f"no rebirth request {what} within {args.timeout}s", file=sys.stderr)
                    return False
                if resend is not None:
                    resend()
                arrived.wait(timeout=min(left, 1.0))
        return True

    now = spb.get_current_timestamp
    bd_seq = spb.Metric(timestamp=now(), name="bdSeq", datatype=spb.DataType.INT64, value=0)

    # 1. DATA before any BIRTH.
    early = spb.NData(
        timestamp=now(),
        seq=5,
        metrics=(spb.Metric(timestamp=now(), name="uptime", datatype=spb.DataType.UINT32, value=1),),
    )
    if not wait_ncmd(1, "for NDATA before NBIRTH", lambda: send(spb.MessageType.NDATA, early)):
        return 1
    # A resend may have crossed the first answer: let its answer come before counting on.
    time.sleep(0.3)

    # 2. Births.
    send(
        spb.MessageType.NBIRTH,
        spb.NBirth(
            timestamp=now(),
            seq=0,
            metrics=(
                bd_seq,
                spb.Metric(timestamp=now(), name="Node Control/Rebirth",
                           datatype=spb.DataType.BOOLEAN, value=False),
                spb.Metric(timestamp=args.t0, name="uptime", datatype=spb.DataType.UINT32, value=7),
            ),
        ),
    )
    send(
        spb.MessageType.DBIRTH,
        spb.DBirth(
            timestamp=args.t0,
            seq=1,
            metrics=(
                spb.Metric(timestamp=args.t0, name="temp", alias=1,
                           datatype=spb.DataType.DOUBLE, value=70.0),
                spb.Metric(timestamp=args.t0, name="running", alias=2,
                           datatype=spb.DataType.BOOLEAN, value=True),
                spb.Metric(timestamp=args.t0, name="firmware", alias=3,
                           datatype=spb.DataType.STRING, value="2.1.0"),
            ),
        ),
        args.device,
    )

    # 3. Hourly data by alias.
    hour = 3_600_000
    seq = 2
    for h in range(args.hours):
        temp = 70.0 + (h % 3) * 0.5 if h < 30 else 74.0 + (h - 30) * 1.5
        ts = args.t0 + h * hour
        send(
            spb.MessageType.DDATA,
            spb.DData(
                timestamp=ts,
                seq=seq % 256,
                metrics=(
                    spb.Metric(timestamp=ts, name=None, alias=1,
                               datatype=spb.DataType.DOUBLE, value=temp),
                    spb.Metric(timestamp=ts, name=None, alias=2,
                               datatype=spb.DataType.BOOLEAN, value=True),
                ),
            ),
            args.device,
        )
        seq += 1

    # 4. A gap of three messages.
    seq += 3
    ts = args.t0 + args.hours * hour
    before = len(ncmds)
    send(
        spb.MessageType.DDATA,
        spb.DData(timestamp=ts, seq=seq % 256, metrics=(
            spb.Metric(timestamp=ts, name=None, alias=1, datatype=spb.DataType.DOUBLE, value=99.0),
        )),
        args.device,
    )
    seq += 1
    if not wait_ncmd(before + 1, "after a seq gap"):
        return 1

    # 5. An alias no BIRTH defined.
    ts += hour
    before = len(ncmds)
    send(
        spb.MessageType.DDATA,
        spb.DData(timestamp=ts, seq=seq % 256, metrics=(
            spb.Metric(timestamp=ts, name=None, alias=99, datatype=spb.DataType.DOUBLE, value=1.0),
        )),
        args.device,
    )
    seq += 1
    if not wait_ncmd(before + 1, "for an unknown alias"):
        return 1

    # 6. Deaths.
    send(spb.MessageType.DDEATH, spb.DDeath(timestamp=ts + 1, seq=seq % 256), args.device)
    last_seq = seq % 256
    send(spb.MessageType.NDEATH, spb.NDeath(timestamp=now(), bd_seq_metric=bd_seq))
    time.sleep(0.5)
    client.disconnect()
    print(json.dumps({"ncmd": ncmds, "last_seq": last_seq}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
