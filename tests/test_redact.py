"""Credential masking of URLs (used by every message, page and stats that shows a source)."""

from __future__ import annotations

import pytest

from edgedet.redact import mask_text, mask_url


@pytest.mark.parametrize("url, masked", [
    ("rtsp://admin:hunter2@192.168.1.64:554/stream1", "rtsp://admin:***@192.168.1.64:554/stream1"),
    ("rtsp://admin:p@ss:w@rd@cam/live", "rtsp://admin:***@cam/live"),  # '@' and ':' inside the password
    ("rtsp://u:p%40ss@h", "rtsp://u:***@h"),
    ("rtsp://u:pa/ss@cam/live", "rtsp://u:***@cam/live"),  # an unescaped '/' in the password
    ("http://cam/files/a@b.jpg", "http://cam/files/a@b.jpg"),
    ("rtsp://viewer@cam/live", "rtsp://viewer@cam/live"),  # a user name alone is no secret
    ("http://cam/video.mjpg?user=a&password=b&x=1", "http://cam/video.mjpg?user=a&password=***&x=1"),
    ("https://h/s.m3u8?token=abc", "https://h/s.m3u8?token=***"),
    ("rtsp://cam/live?channel=1", "rtsp://cam/live?channel=1"),
    ("video.mp4", "video.mp4"),
    ("0", "0"),
    ("", ""),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_text_masks_urls_and_given_secrets():
    text = "Could not open rtsp://a:s3cret@10.0.0.2/x (s3cret)"
    assert mask_text(text) == "Could not open rtsp://a:***@10.0.0.2/x (s3cret)"
    assert "s3cret" not in mask_text(text, ["s3cret"])
