"""Reads tensorboardX event files back for tests (TFRecord framing, no TensorFlow needed)."""

import glob
import os
import struct


def events(logdir):
  """Every `Event` proto in the event files under `logdir`, in file order."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  for f in sorted(glob.glob(os.path.join(logdir, 'events.out.tfevents.*'))):
    data = open(f, 'rb').read()
    i = 0
    while i < len(data):
      n, = struct.unpack('<Q', data[i:i + 8])   # length, then its crc (4 bytes)
      ev = event_pb2.Event()
      ev.ParseFromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4                           # the record, then its crc
      yield ev
