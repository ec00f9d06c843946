#!/usr/bin/env python3
"""An RTSP server for the annotated stream: raw BGR frames on stdin, H.264 to every RTSP viewer.

Run by ``edgedet.sinks.rtsp_serve`` with a Python that has GStreamer's bindings and RTSP server
(Debian / Raspberry Pi OS: ``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly``);
standard library and ``gi`` only, so it also runs on its own::

    python3 rtsp_server_gst.py --probe     # {"gstreamer": "1.22.0", "encoders": [...]}, or a reason and exit 3

Input (stdin): one JSON line of settings (``host``, ``port``, ``path``, ``fps``, ``bitrate``,
``encoder`` = auto/software/hardware, optional ``user``/``password`` for RTSP basic auth), then
frames, each a ``HEADER`` (magic, width, height) followed by width*height*3 bytes of BGR.

Output (stdout, one line each): ``READY {"port": ..., "encoder": ...}`` once listening,
``CLIENTS n`` whenever the number of connected viewers changes, ``ERROR reason`` before a failed
exit (exit 3: no GStreamer RTSP server for this Python; 4: cannot listen; 5: bad input; 6: no H.264
encoder of the kind asked for).

One media is shared by every viewer (``appsrc ! videoconvert ! ENCODER ! rtph264pay``), built for
the first viewer and torn down after the last. Frames arriving while nobody watches are read and
dropped; a frame arriving while the encoder still has ``QUEUED`` frames waiting is dropped too, so
a slow encoder never makes the feeder wait. The server ends when stdin closes (its parent ended,
however it ended), or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import threading

HEADER = struct.Struct("<4sII")
MAGIC = b"EDGF"
QUEUED = 2  # frames waiting in the appsrc before newer ones are dropped
HW_DEVICE = "/dev/video11"  # the Raspberry Pi 4's H.264 encoder (a Pi 5 has none)
EXIT_UNAVAILABLE, EXIT_LISTEN, EXIT_INPUT, EXIT_NO_ENCODER = 3, 4, 5, 6

# (element, kind, launch fragment after "videoconvert ! video/x-raw,format=I420 !"), in order of preference.
# {kbps}/{bps}: bitrate; {gop}: frames between key frames (2 s, so a new viewer starts within 2 s).
ENCODERS = (
    ("v4l2h264enc", "hardware",
     'v4l2h264enc extra-controls="controls,repeat_sequence_header=1,video_bitrate={bps},h264_i_frame_period={gop}" '
     "! video/x-h264,level=(string)4,profile=(string)constrained-baseline ! h264parse"),
    ("x264enc", "software",
     "x264enc tune=zerolatency speed-preset=ultrafast bitrate={kbps} key-int-max={gop} bframes=0 "
     "! video/x-h264,profile=constrained-baseline"),
    ("openh264enc", "software",
     "openh264enc bitrate={bps} gop-size={gop} complexity=low rate-control=bitrate ! h264parse"),
)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fail(code: int, reason: str) -> int:
    say(f"ERROR {reason}")
    return code


def available_encoders(gst) -> list:
    """``[(element, kind, launch)]`` of ``ENCODERS`` this GStreamer has (hardware only with its device)."""
    out = []
    for element, kind, launch in ENCODERS:
        if gst.ElementFactory.find(element) is None:
            continue
        if kind == "hardware" and not os.path.exists(HW_DEVICE):
            continue
        out.append((element, kind, launch))
    return out


def choose_encoder(encoders: list, choice: str):
    """The first encoder of ``encoders`` allowed by ``choice`` (auto/software/hardware), or None."""
    for entry in encoders:
        if choice == "auto" or entry[1] == choice:
            return entry
    return None


class Server:
    """The RTSP server and the frames it is fed; ``feed`` runs in the reader thread."""

    def __init__(self, gst, rtsp, glib, settings: dict, encoder: tuple) -> None:
        self.Gst, self.rtsp, self.GLib = gst, rtsp, glib
        self.settings = settings
        self.encoder = encoder
        self.lock = threading.Lock()
        self.src = None  # the shared media's appsrc while someone watches
        self.size = None
        self.clients = 0

    def launch(self) -> str:
        s = self.settings
        fps = max(1, int(round(float(s.get("fps") or 15))))
        bps = int(s.get("bitrate") or 1500000)
        enc = self.encoder[2].format(bps=bps, kbps=max(1, bps // 1000), gop=2 * fps)
        # no queue after the appsrc: the encoder runs in its streaming thread (a thread hop more cost
        # ~17 ms per frame here); feed() drops frames while QUEUED wait in the appsrc
        return (f"( appsrc name=src is-live=true do-timestamp=true format=time block=false "
                f"! videoconvert ! video/x-raw,format=I420 ! {enc} ! rtph264pay name=pay0 pt=96 config-interval=1 )")

    def start(self) -> int:
        """Listen; returns the bound port, or 0."""
        s, rtsp = self.settings, self.rtsp
        factory = rtsp.RTSPMediaFactory()
        factory.set_launch(self.launch())
        factory.set_shared(True)
        factory.connect("media-configure", self.on_media)
        self.server = server = rtsp.RTSPServer()
        server.set_address(str(s.get("host") or "127.0.0.1"))
        server.set_service(str(int(s.get("port") or 0)))
        if s.get("user"):
            self.add_auth(server, factory, str(s["user"]), str(s.get("password") or ""))
        server.get_mount_points().add_factory(str(s.get("path") or "/detections"), factory)
        server.connect("client-connected", self.on_client)
        if server.attach(None) == 0:
            return 0
        return int(server.get_bound_port())

    def add_auth(self, server, factory, user: str, password: str) -> None:
        """RTSP basic auth: only ``user`` may see (and make) the media."""
        rtsp = self.rtsp
        auth = rtsp.RTSPAuth()
        token = rtsp.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(rtsp.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
        perms = rtsp.RTSPPermissions()
        perms.add_permission_for_role("viewer", "media.factory.access", True)
        perms.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(perms)

    def on_client(self, _server, client) -> None:
        self.count_clients(+1)
        client.connect("closed", lambda _c: self.count_clients(-1))

    def count_clients(self, delta: int) -> None:
        self.clients += delta
        say(f"CLIENTS {self.clients}")

    def on_media(self, _factory, media) -> None:
        src = media.get_element().get_by_name("src")
        with self.lock:
            self.src = src
            if self.size is not None:
                src.set_property("caps", self.caps(*self.size))
        media.connect("unprepared", self.on_unprepared)

    def on_unprepared(self, _media) -> None:
        with self.lock:
            self.src = None

    def caps(self, width: int, height: int):
        fps = max(1, int(round(float(self.settings.get("fps") or 15))))
        return self.Gst.Caps.from_string(f"video/x-raw,format=BGR,width={width},height={height},framerate={fps}/1")

    def feed(self, data: bytes, width: int, height: int) -> None:
        with self.lock:
            src = self.src
            if (width, height) != self.size:
                self.size = (width, height)
                if src is not None:
                    src.set_property("caps", self.caps(width, height))
        if src is None or src.get_property("current-level-bytes") >= QUEUED * len(data):
            return  # nobody watches, or the encoder is behind: drop this frame
        src.emit("push-buffer", self.Gst.Buffer.new_wrapped(data))


def read_frames(stream, server: Server, loop, glib) -> None:
    """Feed every frame of ``stream`` to ``server``; quit ``loop`` at its end (the parent is gone)."""
    try:
        while True:
            head = stream.read(HEADER.size)
            if len(head) < HEADER.size:
                break
            magic, width, height = HEADER.unpack(head)
            if magic != MAGIC or not (0 < width <= 16384 and 0 < height <= 16384):
                say("ERROR bad frame header on stdin")
                break
            data = stream.read(width * height * 3)
            if len(data) < width * height * 3:
                break
            server.feed(data, width, height)
    finally:
        glib.idle_add(loop.quit)


def import_gst():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return Gst, GstRtspServer, GLib


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        gst, rtsp, glib = import_gst()
    except (ImportError, ValueError) as exc:  # no gi, or gi without GstRtspServer
        return fail(EXIT_UNAVAILABLE, f"{sys.executable}: no GStreamer RTSP server for Python ({exc})")
    encoders = available_encoders(gst)
    if "--probe" in argv:
        say(json.dumps({"gstreamer": gst.version_string(), "encoders": [e[0] for e in encoders]}))
        return 0 if encoders else EXIT_NO_ENCODER
    stdin = sys.stdin.buffer
    try:
        settings = json.loads(stdin.readline() or b"{}")
    except ValueError:
        return fail(EXIT_INPUT, "bad settings line on stdin")
    encoder = choose_encoder(encoders, str(settings.get("encoder") or "auto"))
    if encoder is None:
        have = ", ".join(e[0] for e in encoders) or "none"
        return fail(EXIT_NO_ENCODER, f"no {settings.get('encoder')} H.264 encoder in GStreamer "
                                      f"(known: {', '.join(e[0] for e in ENCODERS)}; here: {have})")
    server = Server(gst, rtsp, glib, settings, encoder)
    port = server.start()
    if not port:
        return fail(EXIT_LISTEN, f"cannot listen on {settings.get('host')}:{settings.get('port')} "
                                 "(address in use or not available)")
    loop = glib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        glib.unix_signal_add(glib.PRIORITY_DEFAULT, sig, loop.quit)
    threading.Thread(target=read_frames, args=(stdin, server, loop, glib), daemon=True).start()
    say("READY " + json.dumps({"port": port, "encoder": encoder[0], "gstreamer": gst.version_string()}))
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
