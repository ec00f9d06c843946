"""MqttSink over TLS to a real Mosquitto broker with its own certificate authority (127.0.0.1)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from nethelpers import HOST, Broker, free_port, mosquitto_bin, need, wait_port
from test_mqtt import Subscriber, make_sink

from edgedet.errors import SinkError

pytest.importorskip("paho.mqtt.client")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_broker(tmp_path):
    """A broker with a plain listener (for the test's subscriber) and a TLS listener."""
    need(shutil.which("openssl") is not None, "openssl")
    need(os.path.exists(mosquitto_bin()), "mosquitto (apt-get install mosquitto)")
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=edgedet test CA",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={HOST}", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text(f"subjectAltName=IP:{HOST}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)
    plain, tls = free_port(), free_port()
    lines = ["persistence false", "log_dest stderr", "allow_anonymous true",
             f"listener {plain} {HOST}",
             f"listener {tls} {HOST}", f"cafile {d / 'ca.pem'}", f"certfile {d / 'server.pem'}",
             f"keyfile {d / 'server.key'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines.insert(0, "user root")
    conf = d / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    broker = Broker(plain, conf, d).start()
    wait_port(tls)
    try:
        yield broker, tls, d / "ca.pem"
    finally:
        broker.stop()


def test_events_arrive_over_tls(tls_broker, pedestrian_results):
    broker, tls_port, ca = tls_broker
    sub = Subscriber(broker.port, "edgedet/#")
    try:
        sink = make_sink(tls_port, tls=True, ca_certs=str(ca), max_rate=0)
        with sink:
            for r in pedestrian_results[:10]:
                sink.write(r)
            assert sub.wait_for(lambda: len(sub.events()) >= 1)
        assert all(ev["counts"].get("person", 0) >= 1 for ev in sub.events())
    finally:
        sub.close()


def test_untrusted_certificate_is_a_one_line_error(tls_broker, tmp_path):
    _, tls_port, _ = tls_broker
    other = tmp_path / "other"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=someone else",
             "-keyout", "o.key", "-out", "o.pem", cwd=other)
    sink = make_sink(tls_port, tls=True, ca_certs=str(other / "o.pem"))
    with pytest.raises(SinkError) as err:
        sink.open()
        sink.close()
    assert "\n" not in str(err.value) and "certificate" in str(err.value).lower()
