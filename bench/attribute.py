#!/usr/bin/env python3
"""Shares of a ferry node's CPU by component, from `perf script` output of a call-graph profile.

Each sample goes to the first component (in the order below) whose pattern matches any frame of
its stack, so the order decides the owner of nested work: the store writer's thread before the
evidence code it runs, the service call before the HTTP client it uses, and so on. Used by
`bench/compare.sh --profile`; by hand: `perf script -i perf.data | bench/attribute.py`.
"""
import collections
import re
import sys

COMPONENTS = [
    ("store writer thread (SQLite, evidence sealing, lz4)", r"ferry::store::writer"),
    ("evidence records rendered on the request path", r"ferry::store::trust::|ferry::evidence::"),
    ("host's JSON body parsed", r"ferry::api::envelope::json_body|serde_path_to_error"),
    ("service call (reqwest, hyper client, its socket)", r"reqwest::|hyper_util::client|hyper::client"),
    ("QUIC connection driver (quinn-proto, AEAD, UDP send)", r"quinn::connection::ConnectionDriver|quinn_proto::"),
    ("QUIC endpoint driver (UDP receive)", r"quinn::endpoint::EndpointDriver"),
    ("QUIC streams read and written by ferry's tasks", r"quinn::(send_stream|recv_stream|connection::)"),
    ("wire frames encoded and decoded (postcard)", r"ferry::wire::|postcard::"),
    ("metrics", r"ferry::metrics|prometheus_client"),
    ("API handler (validation, envelope)", r"ferry::api::requests|ferry::api::envelope|ferry::exchange"),
    ("peer's request handled (access, dedupe)", r"ferry::link::inbound|ferry::deliver|ferry::service::"),
    ("API guard and axum routing", r"ferry::api::guard|axum::"),
    ("HTTP/1 server (hyper) and its socket", r"hyper::server|hyper::proto"),
    ("tokio: idle (park, epoll)", r"Context::park|epoll_wait"),
    ("tokio: scheduling", r"tokio::runtime"),
]


def samples(lines):
    """Yields each sample's stack as one string of its frames."""
    stack = []
    for line in lines:
        if not line.strip():
            if stack:
                yield "\n".join(stack)
            stack = []
        elif line[0] in " \t":
            stack.append(line.strip())
    if stack:
        yield "\n".join(stack)


def main():
    patterns = [(name, re.compile(p)) for name, p in COMPONENTS]
    counts = collections.Counter()
    for stack in samples(sys.stdin):
        owner = next((name for name, p in patterns if p.search(stack)), "other")
        counts[owner] += 1
    total = sum(counts.values()) or 1
    print("| component | share of the node's CPU samples |")
    print("| --- | ---: |")
    for name, count in counts.most_common():
        print(f"| {name} | {100 * count / total:.1f}% |")
    print(f"\n{total} samples")


if __name__ == "__main__":
    main()
