"""Child process for the cross-process message id test.

Reads a JSON list of ``[stream, data]`` pairs on stdin and prints ``message_id(stream, data)``
for each, one per line.
"""

from __future__ import annotations

import sys

import orjson

from wshub.core.dedup import message_id


def main() -> None:
    for stream, data in orjson.loads(sys.stdin.buffer.read()):
        print(message_id(stream, data))


if __name__ == "__main__":
    main()
