#!/usr/bin/python3
"""A camera-like GStreamer RTSP server on 127.0.0.1: ``GstRtspServer`` with *shared* media.

Run with the system Python, which has ``python3-gi`` and the GStreamer bindings (Debian:
``gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{good,bad,ugly}``)::

    /usr/bin/python3 gst_rtsp_server.py --video VIDEO [--port 0] [--path /cam] [--size 480x360] [--fps 10]

A producer pipeline decodes ``VIDEO`` in real time and loops it forever into an ``intervideosink``;
the RTSP media (``intervideosrc ! x264enc tune=zerolatency ! rtph264pay``) is a live source shared
by every client, as a camera's ``gst-rtsp-server`` setup is: the media is prepared for the first
client and torn down when the last one leaves. Prints ``PORT <n>`` on stdout once it listens.
Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

CHANNEL = "edgedet-cam"


def producer(video: str, width: int, height: int, fps: int) -> Gst.Pipeline:
    """``VIDEO`` decoded at its own pace, scaled to ``width``x``height``@``fps``, looped at its end."""
    location = video.replace("\\", "\\\\").replace('"', '\\"')
    pipe = Gst.parse_launch(
        f'filesrc location="{location}" ! decodebin ! videoconvert ! videoscale ! videorate ! '
        f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! "
        f"intervideosink channel={CHANNEL} sync=true"
    )

    def on_message(_bus, msg):
        if msg.type == Gst.MessageType.EOS:
            pipe.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        elif msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print(f"producer error: {err.message} ({debug})", file=sys.stderr, flush=True)
            sys.exit(1)
        return True

    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)
    return pipe


def media_factory(width: int, height: int, fps: int) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( intervideosrc channel={CHANNEL} ! "
        f"video/x-raw,format=I420,width={width},height={height},framerate={fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=1500 ! "
        f"video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    return factory


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--size", default="480x360")
    ap.add_argument("--fps", type=int, default=10)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    Gst.init(None)
    loop = GLib.MainLoop()
    pipe = producer(args.video, width, height, args.fps)
    if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        print(f"cannot play {args.video}", file=sys.stderr, flush=True)
        return 1

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, media_factory(width, height, args.fps))
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"PORT {server.get_bound_port()}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    try:
        loop.run()
    finally:
        pipe.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
