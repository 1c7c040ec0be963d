"""ferry integration-test harness: real hosts, real QEMU, real TLS.

Two hosts are two network namespaces joined by a veth pair (when root), each
running its own ferryd; without root the two agents share loopback on
127.0.0.1 / 127.0.0.2 and tests that need namespaces skip. Certificates
are made by the test with `ferry pki`. Every process and namespace the
harness starts is removed on exit, also when a test fails.

Environment (set by meson):
  FERRY_BUILD_DIR   build tree with src/agent/ferryd and src/cli/ferry
  FERRY_SOURCE_DIR  source tree (guest/build-guest.sh)
  FERRY_GUEST_DIR   where the guest kit caches kernel + initramfs
  FERRY_KEEP        keep the work directory for debugging
"""

import atexit
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77  # meson's exit code for a skipped test

BUILD = os.environ.get("FERRY_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
SOURCE = os.environ.get("FERRY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))
FERRYD = os.path.join(BUILD, "src/agent/ferryd")
FERRY = os.path.join(BUILD, "src/cli/ferry")
GUEST_DIR = os.environ.get("FERRY_GUEST_DIR", os.path.join(BUILD, "guest-image"))
PORT = 7711

_cleanups = []


class StealMeter:
    """Share of the machine's CPU time the hypervisor gave to others
    (/proc/stat's steal) between start() and percent(): a bench run on a
    shared host is slower when it is high."""

    @staticmethod
    def _read():
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        steal = fields[7] if len(fields) > 7 else 0
        return steal, sum(fields[:8])

    def __init__(self):
        self.start()

    def start(self):
        self.steal, self.total = self._read()

    def percent(self):
        steal, total = self._read()
        return round(100.0 * (steal - self.steal) / max(total - self.total, 1), 1)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(argv, check=True, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


class WaitAbandoned(AssertionError):
    """Raised by a predicate when what it waits for can no longer happen."""


def wait_until(what, predicate, timeout=120.0, interval=0.2):
    """Polls predicate until it returns a true value; fails naming what."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except WaitAbandoned:
            raise
        except Exception as error:  # noqa: BLE001 - report the last one
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f" (last error: {last_error})" if last_error else ""))


_clusters = []
# What an agent must never log: GLib's programming-error reports and the
# sanitizers' findings (the instrumented build keeps running after some).
AGENT_BUGS = re.compile(r"CRITICAL \*\*|AddressSanitizer|runtime error:")


def print_agent_log_tails(lines=25):
    """What each agent did last: a failed test's report (CI shows only the
    end of the output, so this comes just before the verdict)."""
    for cluster in _clusters:
        for host in (cluster.a, cluster.b):
            try:
                with open(host.log_path, errors="replace") as handle:
                    # Request logs (DEBUG) would crowd out what happened.
                    tail = [line for line in handle.read().splitlines() if "-DEBUG:" not in line][-lines:]
            except FileNotFoundError:
                continue
            print(f"--- last {len(tail)} lines of ferryd on {host.name} ---", flush=True)
            for line in tail:
                print(f"  {line[:300]}", flush=True)


def assert_agents_clean():
    for cluster in _clusters:
        for host in (cluster.a, cluster.b):
            try:
                with open(host.log_path, errors="replace") as handle:
                    text = handle.read()
            except FileNotFoundError:
                continue
            found = AGENT_BUGS.search(text)
            if found:
                start = text.rfind("\n", 0, max(0, found.start() - 400)) + 1
                raise AssertionError(f"ferryd on {host.name} reported a bug:\n{text[start:found.end() + 600]}")


def _cleanup_all():
    while _cleanups:
        action = _cleanups.pop()
        try:
            action()
        except Exception as error:  # noqa: BLE001 - keep cleaning
            print(f"cleanup: {error}", file=sys.stderr)


atexit.register(_cleanup_all)
for _signal in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signal, lambda signum, frame: sys.exit(128 + signum))


def ensure_guest():
    """Builds (or reuses) the guest kit: kernel + initramfs."""
    script = os.path.join(SOURCE, "guest/build-guest.sh")
    run(["bash", script, GUEST_DIR], timeout=900)
    kernel = os.path.join(GUEST_DIR, "vmlinuz")
    initrd = os.path.join(GUEST_DIR, "initramfs.img")
    assert os.path.exists(kernel) and os.path.exists(initrd), "guest kit produced no kernel/initrd"
    return kernel, initrd


class Host:
    """One ferry host: a namespace (or a loopback address) and its ferryd."""

    def __init__(self, cluster, name, address, netns, veth=None, agent_args=None, agent_env=None):
        self.cluster = cluster
        # More ferryd options (e.g. ["--pool", "fast=/dir"]); kept across restarts.
        self.agent_args = list(agent_args or [])
        # More environment for ferryd (test hooks such as FERRY_FAULT_*).
        self.agent_env = dict(agent_env or {})
        self.veth = veth
        self.name = name
        self.address = address
        self.netns = netns
        self.state_dir = os.path.join(cluster.workdir, name)
        self.tls_dir = os.path.join(cluster.pki_dir, "hosts", name)
        self.url = f"https://{address}:{PORT}"
        self.process = None
        self.log_path = os.path.join(cluster.workdir, f"{name}.log")

    def prefix(self):
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def start_agent(self):
        log_file = open(self.log_path, "a")
        argv = self.prefix() + [FERRYD, "--state-dir", self.state_dir, "--tls-dir", self.tls_dir,
                                "--listen", f"{self.address}:{PORT}",
                                "--keepalive-interval-ms", "500",
                                "--keepalive-timeout-ms", str(self.cluster.keepalive_timeout_ms),
                                "--shutdown-timeout", "20"] + self.agent_args
        env = dict(os.environ, FERRY_ACCEL=self.cluster.accel, **self.agent_env)
        self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        wait_until(f"ferryd on {self.name} to answer",
                   lambda: self.process.poll() is None and self.cli("vm", "list", check=False).returncode == 0
                   or self._agent_died(), timeout=60)

    def start_agent_unchecked(self):
        """Starts ferryd and waits until it listens, without calling it
        (for agents our client is not meant to trust)."""
        log_file = open(self.log_path, "a")
        offset = os.path.getsize(self.log_path)
        argv = self.prefix() + [FERRYD, "--state-dir", self.state_dir, "--tls-dir", self.tls_dir,
                                "--listen", f"{self.address}:{PORT}"] + self.agent_args
        env = dict(os.environ, FERRY_ACCEL=self.cluster.accel)
        self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)

        def listening():
            with open(self.log_path) as handle:
                handle.seek(offset)
                return "listening on" in handle.read() or self._agent_died()
        wait_until(f"ferryd on {self.name} to listen", listening, timeout=60)

    def _agent_died(self):
        if self.process.poll() is not None:
            raise AssertionError(f"ferryd on {self.name} exited: {open(self.log_path).read()[-2000:]}")
        return False

    def stop_agent(self, kill=False):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=30)

    def cli_argv(self, *args):
        """ferry's command line against this host's agent, as the test client."""
        return self.prefix() + [FERRY, "-c", self.url, "--tls-dir", self.cluster.client_tls] + list(args)

    def cli(self, *args, check=True, json_output=False, timeout=600):
        argv = self.cli_argv(*(["--json"] if json_output else []), *args)
        result = run(argv, check=check, timeout=timeout)
        if json_output and result.returncode == 0:
            return json.loads(result.stdout)
        return result

    def cli_on_terminal(self, *args, timeout=600):
        """Runs ferry with its stderr on a pseudo-terminal, as at a shell
        (the progress bar is drawn only there). Returns the completed
        process; its stderr is what the terminal showed, bar frames and
        all (each frame begins with a carriage return)."""
        argv = self.cli_argv(*args)
        master, slave = pty.openpty()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        chunks = []

        def drain():
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the last writer closed its end
                    return
                if not data:
                    return
                chunks.append(data)
        reader = threading.Thread(target=drain)
        reader.start()
        try:
            stdout, _ = process.communicate(timeout=timeout)
        finally:
            reader.join(timeout=10)
            os.close(master)
        return subprocess.CompletedProcess(argv, process.returncode, stdout,
                                           b"".join(chunks).decode(errors="replace"))

    def vms(self):
        return {vm["name"]: vm for vm in self.cli("vm", "list", json_output=True)["vms"]}

    def console_path(self, vm):
        return os.path.join(self.state_dir, "vms", vm, "console.log")

    def console(self, vm):
        try:
            with open(self.console_path(vm), "rb") as handle:
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def qemu_pids(self):
        """QEMU processes this host's agent started (found by state dir)."""
        result = run(["pgrep", "-f", f"qemu-system.*{self.state_dir}/"], check=False)
        return [int(pid) for pid in result.stdout.split()]

    def tx_bytes(self):
        """Bytes sent on this host's veth, as its agent's namespace counts
        them (/proc/PID/net/dev of ferryd): no process per reading."""
        with open(f"/proc/{self.process.pid}/net/dev") as handle:
            for line in handle:
                name, _, fields = line.partition(":")
                if name.strip() == self.veth:
                    return int(fields.split()[8])
        raise AssertionError(f"{self.veth} is not in {self.name}'s network namespace")

    def run_in(self, *argv, check=True):
        return run(self.prefix() + list(argv), check=check)


class Cluster:
    """Two hosts, A and B, with a CA, host and client certificates."""

    def __init__(self, keepalive_timeout_ms=4000, need_netns=False, agent_args=None, agent_env=None):
        """agent_args: {"hosta": [...], "hostb": [...]}, more ferryd options
        per host (a directory they name must exist before the Cluster);
        agent_env: {"hostb": {"VAR": "value"}}, more environment."""
        self.root = os.geteuid() == 0
        if need_netns and not self.root:
            log("SKIP: this test needs root for network namespaces")
            sys.exit(SKIP)
        self.accel = os.environ.get("FERRY_ACCEL", "tcg")
        self.keepalive_timeout_ms = keepalive_timeout_ms
        self.workdir = tempfile.mkdtemp(prefix="ferry-it-")
        if not os.environ.get("FERRY_KEEP"):
            _cleanups.append(lambda: shutil.rmtree(self.workdir, ignore_errors=True))
        self.pki_dir = os.path.join(self.workdir, "pki")
        tag = os.getpid() % 250
        if self.root:
            self.netns = [f"ferry{os.getpid()}a", f"ferry{os.getpid()}b"]
            self.veth = [f"fva{os.getpid()}"[:15], f"fvb{os.getpid()}"[:15]]
            addresses = [f"10.231.{tag}.1", f"10.231.{tag}.2"]
            self._make_network(addresses)
        else:
            self.netns = [None, None]
            addresses = ["127.0.0.1", "127.0.0.2"]
        self._make_pki(addresses)
        veths = self.veth if self.root else [None, None]
        agent_args = agent_args or {}
        agent_env = agent_env or {}
        self.a = Host(self, "hosta", addresses[0], self.netns[0], veths[0], agent_args.get("hosta"),
                      agent_env.get("hosta"))
        self.b = Host(self, "hostb", addresses[1], self.netns[1], veths[1], agent_args.get("hostb"),
                      agent_env.get("hostb"))
        _cleanups.append(self._stop_everything)
        _clusters.append(self)
        self.a.start_agent()
        self.b.start_agent()

    def _make_network(self, addresses):
        ns_a, ns_b = self.netns
        veth_a, veth_b = self.veth
        for ns in self.netns:
            run(["ip", "netns", "add", ns])
            _cleanups.append(lambda ns=ns: run(["ip", "netns", "delete", ns], check=False))
        run(["ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b])
        run(["ip", "link", "set", veth_a, "netns", ns_a])
        run(["ip", "link", "set", veth_b, "netns", ns_b])
        for ns, veth, address in ((ns_a, veth_a, addresses[0]), (ns_b, veth_b, addresses[1])):
            run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", veth])
            run(["ip", "netns", "exec", ns, "ip", "link", "set", veth, "up"])
            run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])

    def _make_pki(self, addresses):
        env_pki = ["--dir", self.pki_dir]
        run([FERRY, "pki", "init"] + env_pki)
        run([FERRY, "pki", "issue-host", "hosta", "--address", addresses[0]] + env_pki)
        run([FERRY, "pki", "issue-host", "hostb", "--address", addresses[1]] + env_pki)
        run([FERRY, "pki", "issue-client", "tester"] + env_pki)
        self.client_tls = os.path.join(self.pki_dir, "clients", "tester")

    def _stop_everything(self):
        for host in (self.a, self.b):
            host.stop_agent(kill=True)
        # QEMUs are daemonized and outlive their agent: kill by state dir.
        for host in (self.a, self.b):
            for pid in host.qemu_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if os.environ.get("FERRY_KEEP"):
            log(f"kept {self.workdir}")

    def link_down(self):
        self.a.run_in("ip", "link", "set", self.veth[0], "down")

    def link_up(self):
        self.a.run_in("ip", "link", "set", self.veth[0], "up")

    def shape(self, rate="1gbit"):
        for host, veth in ((self.a, self.veth[0]), (self.b, self.veth[1])):
            host.run_in("tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", rate,
                        "burst", "256kb", "latency", "50ms")

    def unshape(self):
        for host, veth in ((self.a, self.veth[0]), (self.b, self.veth[1])):
            host.run_in("tc", "qdisc", "del", "dev", veth, "root", check=False)


def guest_spec(path, name, kernel, initrd, memory_mib=256, dirty_mib=0, dirty_rate=0,
               marker=None, disks=None, extra_cmdline=None):
    """Writes a VM spec for the test guest and returns its path."""
    cmdline = "console=ttyS0 quiet panic=-1"
    if extra_cmdline:
        cmdline += " " + extra_cmdline
    if dirty_mib:
        cmdline += f" ferry.dirty_mib={dirty_mib} ferry.dirty_rate={dirty_rate}"
    if marker:
        cmdline += f" ferry.marker={marker}"
    spec = {
        "name": name,
        "vcpus": 1,
        "memory": memory_mib,
        "boot": {"kernel": kernel, "initrd": initrd, "cmdline": cmdline},
        "nics": [],
        "disks": disks or [],
    }
    with open(path, "w") as handle:
        json.dump(spec, handle, indent=2)
    return path


TICK = re.compile(r"tick (\d+) boot_id=([0-9a-f-]+)")


def last_tick(console_text):
    """(N, boot_id) of the last tick line, or (0, None)."""
    matches = TICK.findall(console_text)
    if not matches:
        return 0, None
    number, boot_id = matches[-1]
    return int(number), boot_id


def wait_for_ticks(host, vm, beyond=0, boot_id=None, timeout=180):
    """Waits for a tick numbered above `beyond` (same boot when boot_id)."""
    def ticked():
        number, seen_boot = last_tick(host.console(vm))
        if boot_id is not None and seen_boot is not None and seen_boot != boot_id:
            raise AssertionError(f"guest {vm} rebooted on {host.name}: boot id {seen_boot} != {boot_id}")
        return (number, seen_boot) if number > beyond else None
    return wait_until(f"{vm} to tick past {beyond} on {host.name}", ticked, timeout=timeout)


def wait_for_console(host, vm, pattern, timeout=180):
    regex = re.compile(pattern)
    return wait_until(f"'{pattern}' on {vm}'s console on {host.name}",
                      lambda: regex.search(host.console(vm)), timeout=timeout)


def job(host, vm, completed=False):
    args = ["job", "info", vm] + (["--completed"] if completed else [])
    return host.cli(*args, json_output=True)


def wait_job_stat(host, vm, key, timeout=120):
    """Waits for the running job to publish stats[key]; a job that ends
    first fails the wait at once with its state, error and last events."""
    def published():
        info = job(host, vm)
        if key in info.get("stats", {}):
            return info
        if not info.get("active"):
            events = [f"{e.get('level')}: {e.get('message')}" for e in info.get("events", [])[-8:]]
            raise WaitAbandoned(f"job of {vm} on {host.name} ended {info.get('state')} "
                                f"({info.get('error')}) before publishing {key}; last events:\n  "
                                + "\n  ".join(events))
        return None
    return wait_until(f"{key} in the job of {vm} on {host.name}", published, timeout=timeout)


def wait_job_done(host, vm, timeout=300):
    def done():
        info = job(host, vm)
        return info if not info.get("active") else None
    return wait_until(f"the job of {vm} on {host.name} to end", done, timeout=timeout)


def assert_clean(host, vm):
    """The host has neither a definition nor a QEMU for vm."""
    assert vm not in host.vms(), f"{host.name} still has a definition of {vm}: {host.vms()}"
    def runs_vm(pid):
        try:
            with open(f"/proc/{pid}/cmdline") as handle:
                return f"guest={vm}," in handle.read().replace("\0", " ")
        except FileNotFoundError:
            return False
    pids = [pid for pid in host.qemu_pids() if runs_vm(pid)]
    assert not pids, f"{host.name} still runs a QEMU for {vm}: pids {pids}"


def main(test):
    """Runs a test function, printing a clear verdict; exit status for meson."""
    try:
        test()
        assert_agents_clean()
    except AssertionError as error:
        print_agent_log_tails()
        log(f"FAIL: {error}")
        _cleanup_all()
        sys.exit(1)
    log("PASS")
    _cleanup_all()
    sys.exit(0)
