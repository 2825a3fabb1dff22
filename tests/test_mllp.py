"""MLLP framing and the threaded server (clearinghouse.mllp), over plain sockets through a fake TLS
layer with the same contract as clearinghouse.tls.ServerTLS."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from clearinghouse import hl7, mllp
from clearinghouse.peer import Peer
from clearinghouse.tls import TlsRefused

PEER = Peer("CN=feed.example.org", "ab" * 32, "example-site", frozenset({"source"}))
MSG = b"MSH|^~\\&|SRC|SITE|CH|ISN|2026||ADT^A01^ADT_A01|C%d|P|2.5\rPID|||X\r"


class PlainStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, n):
        return self.sock.recv(n)

    def sendall(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


class FakeTLS:
    """accept() as in clearinghouse.tls: a stream and the authenticated Peer, or TlsRefused."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    def accept(self, sock):
        if self.refuse:
            sock.close()
            raise TlsRefused("client certificate refused")
        return PlainStream(sock), PEER


def ack_handler(peer, data):
    if b"BOOM" in data:
        raise RuntimeError("handler bug")
    return hl7.build_ack(hl7.parse_message(data), "AA", text=peer.participant)


def chunks(*parts: bytes):
    """A recv() that returns the given parts one per call, then EOF."""
    it = iter(parts)
    return lambda _n: next(it, b"")


def read_all(recv, max_bytes=1000) -> list[bytes]:
    buf, out = bytearray(), []
    while (m := mllp.read_frame(recv, buf, max_bytes)) is not None:
        out.append(m)
    return out


class TestFraming:
    def test_frame(self):
        assert mllp.frame(b"abc") == b"\x0babc\x1c\x0d"

    def test_byte_by_byte(self):
        data = mllp.frame(b"one") + mllp.frame(b"two")
        assert read_all(chunks(*(data[i : i + 1] for i in range(len(data))))) == [b"one", b"two"]

    def test_several_frames_in_one_read(self):
        data = b"".join(mllp.frame(b"m%d" % i) for i in range(5))
        assert read_all(chunks(data)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]

    def test_end_block_split_across_reads(self):
        assert read_all(chunks(b"\x0babc\x1c", b"\x0d\x0bdef\x1c", b"\x0d")) == [b"abc", b"def"]

    def test_fs_without_cr_is_data(self):
        assert read_all(chunks(b"\x0ba\x1cb\x1c\x0d")) == [b"a\x1cb"]

    def test_garbage_is_skipped(self):
        data = b"noise\r\n" + mllp.frame(b"one") + b"\r\n\x00junk" + mllp.frame(b"two") + b"\n"
        assert read_all(chunks(data[:3], data[3:12], data[12:])) == [b"one", b"two"]

    def test_clean_eof(self):
        assert mllp.read_frame(chunks(), bytearray(), 10) is None
        assert mllp.read_frame(chunks(b"garbage only"), bytearray(), 10) is None

    @pytest.mark.parametrize("data", [b"\x0bpartial", b"\x0bpartial\x1c", b"\x0b"])
    def test_truncated_frame(self, data):
        with pytest.raises(mllp.MllpFrameError):
            mllp.read_frame(chunks(data), bytearray(), 1000)

    def test_limit_is_inclusive(self):
        assert read_all(chunks(mllp.frame(b"x" * 1000)), 1000) == [b"x" * 1000]
        with pytest.raises(mllp.MllpFrameTooLarge):
            read_all(chunks(mllp.frame(b"x" * 1001)), 1000)

    def test_too_large_without_buffering_everything(self):
        received = 0

        def endless(n):
            nonlocal received
            received += n
            return b"\x0bMSH|^~\\&|A" if received == n else b"y" * n

        with pytest.raises(mllp.MllpFrameTooLarge) as exc:
            mllp.read_frame(endless, bytearray(), 100_000)
        assert received <= 100_000 + 2 * mllp.CHUNK
        assert exc.value.prefix.startswith(b"MSH|") and exc.value.limit == 100_000

    def test_frame_reader(self):
        reader = mllp.FrameReader(chunks(mllp.frame(b"a") + mllp.frame(b"b")), 10)
        assert [reader.read(), reader.read(), reader.read()] == [b"a", b"b", None]


@pytest.fixture
def server() -> Iterator[mllp.MllpServer]:
    srv = mllp.MllpServer("127.0.0.1", 0, FakeTLS(), ack_handler, max_message_bytes=4096, name="test-mllp")
    srv.start()
    yield srv
    srv.stop()


def connect(srv: mllp.MllpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    return sock


def ack_code(ack: bytes) -> str:
    return hl7.parse_message(ack).get("MSA", 1)


def read_response(sock: socket.socket) -> bytes | None:
    return mllp.read_frame(sock.recv, bytearray(), 1 << 20)


class TestServer:
    def test_binds_port_zero(self, server):
        assert server.port > 0

    def test_many_messages_on_one_connection(self, server):
        with mllp.MllpClient("127.0.0.1", server.port, None, timeout=5) as client:
            for i in range(200):
                ack = hl7.parse_message(client.send(MSG % i))
                assert (ack.get("MSA", 1), ack.get("MSA", 2)) == ("AA", f"C{i}")
        # the peer's identity reached the handler (it echoed the participant as MSA-3)
        assert ack.get("MSA", 3) == "example-site"

    def test_send_message(self, server):
        ack = hl7.parse_message(mllp.send_message("127.0.0.1", server.port, MSG % 1, None, timeout=5))
        assert ack.get("MSA", 2) == "C1"

    def test_pipelined_and_split_writes(self, server):
        sock = connect(server)
        data = b"junk" + mllp.frame(MSG % 1) + mllp.frame(MSG % 2)
        for i in range(0, len(data), 7):
            sock.sendall(data[i : i + 7])
        buf = bytearray()
        ids = [hl7.parse_message(mllp.read_frame(sock.recv, buf, 1 << 20)).get("MSA", 2) for _ in range(2)]
        assert ids == ["C1", "C2"]
        sock.close()

    def test_concurrent_connections(self, server):
        errors: list[BaseException] = []

        def worker(n):
            try:
                with mllp.MllpClient("127.0.0.1", server.port, None, timeout=10) as client:
                    for i in range(25):
                        ack = hl7.parse_message(client.send(MSG % (n * 1000 + i)))
                        assert ack.get("MSA", 2) == f"C{n * 1000 + i}"
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors

    def test_handler_exception_answers_ae_207(self, server):
        with mllp.MllpClient("127.0.0.1", server.port, None, timeout=5) as client:
            ack = hl7.parse_message(client.send(MSG % 7 + b"ZZZ|BOOM\r"))
            assert (ack.get("MSA", 1), ack.get("MSA", 2), ack.get("ERR", 3)) == ("AE", "C7", "207")
            bad = hl7.parse_message(client.send(b"BOOM not hl7"))
            assert (bad.get("MSA", 1), bad.get("ERR", 3), bad.version) == ("AE", "207", "2.5")
            # the connection survives
            assert hl7.parse_message(client.send(MSG % 8)).get("MSA", 1) == "AA"

    def test_oversized_frame_refused_and_closed(self, server):
        other = mllp.MllpClient("127.0.0.1", server.port, None, timeout=5)
        sock = connect(server)
        big = mllp.frame(MSG % 99 + b"Z" * 3_000_000)

        def push():
            try:
                sock.sendall(big)
            except OSError:
                pass  # the server may close before everything is sent

        sender = threading.Thread(target=push)
        sender.start()
        buf = bytearray()
        ack = hl7.parse_message(mllp.read_frame(sock.recv, buf, 1 << 20))
        assert (ack.get("MSA", 1), ack.get("MSA", 2), ack.get("ERR", 3)) == ("AR", "C99", "207")
        assert "4096-byte limit" in ack.get("ERR", 8)
        sock.settimeout(10)
        assert mllp.read_frame(sock.recv, buf, 1 << 20) is None  # closed by the server
        sender.join(10)
        sock.close()
        # other connections, existing and new, are unaffected
        assert hl7.parse_message(other.send(MSG % 1)).get("MSA", 1) == "AA"
        other.close()
        assert ack_code(mllp.send_message("127.0.0.1", server.port, MSG % 2, None)) == "AA"

    def test_truncated_frame_closes_only_that_connection(self, server):
        sock = connect(server)
        sock.sendall(b"\x0bMSH|^~\\&|half a message")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
        sock.close()
        assert ack_code(mllp.send_message("127.0.0.1", server.port, MSG % 3, None)) == "AA"

    def test_tls_refused(self):
        srv = mllp.MllpServer("127.0.0.1", 0, FakeTLS(refuse=True), ack_handler, max_message_bytes=4096)
        with srv:
            sock = connect(srv)
            assert read_response(sock) is None  # closed without a word
            sock.close()

    def test_idle_timeout(self):
        srv = mllp.MllpServer("127.0.0.1", 0, FakeTLS(), ack_handler, max_message_bytes=4096, idle_timeout=0.3)
        with srv:
            sock = connect(srv)
            started = time.monotonic()
            assert read_response(sock) is None
            assert time.monotonic() - started < 3
            sock.close()

    def test_max_connections(self):
        srv = mllp.MllpServer("127.0.0.1", 0, FakeTLS(), ack_handler, max_message_bytes=4096, max_connections=1)
        with srv, mllp.MllpClient("127.0.0.1", srv.port, None, timeout=5) as first:
            assert hl7.parse_message(first.send(MSG % 1)).get("MSA", 1) == "AA"
            second = connect(srv)
            assert second.recv(10) == b""
            second.close()

    def test_stop_is_prompt_with_live_connections(self):
        srv = mllp.MllpServer("127.0.0.1", 0, FakeTLS(), ack_handler, max_message_bytes=4096)
        srv.start()
        idle = connect(srv)
        mid_frame = connect(srv)
        mid_frame.sendall(b"\x0bMSH|^~\\&|incomplete")
        with mllp.MllpClient("127.0.0.1", srv.port, None, timeout=5) as active:
            active.send(MSG % 1)
            time.sleep(0.1)
            started = time.monotonic()
            srv.stop()
            assert time.monotonic() - started < 2
            for sock in (idle, mid_frame):
                assert sock.recv(10) == b""
                sock.close()
            with pytest.raises(OSError):
                active.send(MSG % 2)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
