"""OVHcloud's own Python SDK (`ovh` 1.2.0) against a running `byoi serve`.

Run by controller/tests/ovh_sdk.rs, which starts the controller and passes
BYOI_URL (http://127.0.0.1:PORT), BYOI_BIN (the `byoi` binary), BYOI_DATA_DIR
(its data directory, so the command line never looks in /var/lib/byoi) and
BYOI_TOKEN (its API token). Every call goes through the SDK, signed, as an
OVHcloud user's script makes it, from an `ovh.conf` holding what `byoi
credentials add` printed; the server's side of a deployment is played by
`SimAgent`, speaking the agent protocol over HTTP as the real agent does.
Standard library and the SDK (with its `requests`) only.
"""

import os
import subprocess
import tempfile
import time
import unittest
import urllib.parse

import ovh
import ovh.client
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families

URL = os.environ["BYOI_URL"]
BYOI = os.environ["BYOI_BIN"]
DATA_DIR = os.environ["BYOI_DATA_DIR"]
TOKEN = os.environ["BYOI_TOKEN"]

# The README's snippet: byoi as one more SDK endpoint.
ovh.client.ENDPOINTS["byoi"] = URL + "/1.0"

# A sha256 of something; no image is fetched, the agent is simulated.
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

# OVHcloud's wording, which scripts match on.
NOT_INSTALLING = "Server is not being installed or reinstalled at the moment"
CHECKSUM_PAIR = "Please provide checkSum AND checkSumType or none of them"

# The `ovh.conf` files, one per credential (setUpModule, tearDownModule).
CONF_DIR = None


def byoi(*args):
    """The `byoi` command line against the controller; its stdout."""
    r = subprocess.run(
        [BYOI, *args, "--controller", URL, "--token", TOKEN, "--data-dir", DATA_DIR],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise AssertionError(f"byoi {args[0]} {args[1] if len(args) > 1 else ''} exited {r.returncode}: {r.stderr}")
    return r.stdout


def credentials(name, *options):
    """`byoi credentials add NAME OPTIONS`: its `key=value` lines, as a dict."""
    out = byoi("credentials", "add", name, *options)
    keys = dict(line.split("=", 1) for line in out.splitlines())
    wanted = {"application_key", "application_secret"}
    if "--application-only" not in options:
        wanted.add("consumer_key")
    assert set(keys) == wanted, f"byoi credentials add printed keys {sorted(keys)}"
    return keys


def write_conf(name, keys):
    """An `ovh.conf` with `keys` for the endpoint byoi, as the README shows."""
    path = os.path.join(CONF_DIR.name, name + ".conf")
    lines = ["[default]", "endpoint=byoi", "", "[byoi]"] + [f"{k}={v}" for k, v in keys.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def client_for(name, *options):
    """A client for new credentials NAME, configured as the README shows."""
    conf = write_conf(name, credentials(name, *options))
    return ovh.Client(config_file=conf)


def add_server(name, mac):
    byoi("server", "add", name, "--mac", mac)


def bearer(method, path, **kwargs):
    """A call with the API token rather than signed, as before issue 16."""
    return requests.request(method, URL + path, headers={"Authorization": "Bearer " + TOKEN}, timeout=30, **kwargs)


def inventory():
    """Two identical SSDs (group 1), a larger NVMe disk (group 2), 16 GiB, UEFI."""
    ssd = {"sizeBytes": 480 * 10**9, "model": "SAMSUNG MZ7LH480", "transport": "sata", "logicalSectorSize": 512}
    return {
        "firmware": "uefi",
        "memoryBytes": 16 << 30,
        "disks": [
            dict(ssd, name="sda", serial="S1"),
            dict(ssd, name="sdb", serial="S2"),
            {"name": "nvme0n1", "sizeBytes": 1920 * 10**9, "model": "NVME", "serial": "N1", "transport": "nvme"},
        ],
        "nics": [{"name": "eth0", "mac": "52:54:00:00:00:00", "link": True}],
    }


class SimAgent:
    """The netbooted agent of one server, over the agent protocol
    (wire/src/agent.rs): its boot script carries its token."""

    def __init__(self, mac):
        self.mac = mac
        self.token = None
        self.deployment = None

    def _call(self, method, path, body=None):
        r = requests.request(
            method,
            URL + "/agent/v1/" + path,
            headers={"Authorization": "Bearer " + self.token},
            json=body,
            timeout=30,
        )
        assert r.status_code == 200, f"agent {method} {path}: {r.status_code} {r.text}"
        return r.json()

    def boot(self):
        """Fetches the boot script (`/boot/{mac}`), keeps the agent's token."""
        r = requests.get(URL + "/boot/" + self.mac.replace(":", "-"), timeout=30)
        assert r.status_code == 200 and "byoi.token=" in r.text, f"boot script: {r.status_code} {r.text}"
        self.token = r.text.split("byoi.token=", 1)[1].split()[0]

    def hello(self):
        return self._call("POST", "hello", {"inventory": inventory(), "version": "sim"})

    def job(self):
        job = self._call("GET", "job")
        self.deployment = job["job"]["deploymentId"]
        return job

    def progress(self, stage, done, total=1000):
        body = {"deploymentId": self.deployment, "stage": stage, "bytesDone": done, "bytesTotal": total}
        return self._call("POST", "progress", body)

    def result(self, status, code=None, message=""):
        body = {"deploymentId": self.deployment, "status": status, "code": code, "message": message}
        return self._call("POST", "result", body)


def setUpModule():
    global CLIENT, CONF_DIR, KEYS
    CONF_DIR = tempfile.TemporaryDirectory(prefix="ovh-conf-")
    KEYS = credentials("sdk")
    CLIENT = ovh.Client(config_file=write_conf("sdk", KEYS))


def tearDownModule():
    CONF_DIR.cleanup()


class Authentication(unittest.TestCase):
    def test_time_is_the_servers_unix_time(self):
        t = CLIENT.get("/auth/time")
        self.assertIsInstance(t, int)
        # Same machine, same clock: a sanity bound, not a timing.
        self.assertLess(abs(t - time.time()), 60)

    def test_every_response_carries_a_query_id(self):
        ok = CLIENT.raw_call("GET", "/dedicated/server")
        self.assertEqual(ok.status_code, 200)
        missing = CLIENT.raw_call("GET", "/dedicated/server/nowhere")
        self.assertEqual(missing.status_code, 404)
        unsigned = requests.get(URL + "/1.0/dedicated/server", timeout=30)
        self.assertEqual(unsigned.status_code, 401)
        time_ = requests.get(URL + "/1.0/auth/time", timeout=30)
        ids = [r.headers.get("X-Ovh-QueryId") for r in (ok, missing, unsigned, time_)]
        self.assertTrue(all(ids), ids)
        self.assertEqual(len(set(ids)), 4, ids)

    def test_no_credential_at_all(self):
        r = requests.get(URL + "/1.0/dedicated/server", timeout=30)
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["class"], "Client::Unauthorized")
        self.assertEqual(r.json()["errorCode"], "NOT_CREDENTIAL")
        # An application key without a consumer key.
        with self.assertRaises(ovh.exceptions.NotCredential):
            CLIENT.get("/dedicated/server", _need_auth=False)

    def test_the_api_token_still_works_under_both_paths(self):
        for path in ("/dedicated/server", "/1.0/dedicated/server"):
            r = bearer("GET", path)
            self.assertEqual(r.status_code, 200, r.text)
            self.assertEqual(r.json(), CLIENT.get("/dedicated/server"))

    def test_current_credential(self):
        c = CLIENT.get("/auth/currentCredential")
        self.assertEqual(c["status"], "validated")
        self.assertIsNone(c["expiration"])
        self.assertIsNone(c["allowedIPs"])
        for field in ("credentialId", "applicationId", "creation", "lastUse"):
            self.assertIn(field, c)
        rules = sorted((r["method"], r["path"]) for r in c["rules"])
        self.assertEqual(rules, [("DELETE", "/*"), ("GET", "/*"), ("POST", "/*"), ("PUT", "/*")])

    def test_a_wrong_application_secret_is_an_invalid_signature(self):
        keys = credentials("wrong-secret")
        secret = keys["application_secret"]
        keys["application_secret"] = ("b" if secret[0] == "a" else "a") + secret[1:]
        client = ovh.Client(config_file=write_conf("wrong-secret", keys))
        with self.assertRaises(ovh.exceptions.BadParametersError) as e:
            client.get("/dedicated/server")
        self.assertIn("Invalid signature", str(e.exception))
        self.assertEqual(e.exception.response.json()["errorCode"], "INVALID_SIGNATURE")

    def test_a_stale_timestamp_is_refused(self):
        client = client_for("stale")
        self.assertIsInstance(client.get("/dedicated/server"), list)
        # The SDK signs with its clock plus the delta it measured at first:
        # ten minutes off is outside any window.
        client._time_delta = -600
        with self.assertRaises(ovh.exceptions.BadParametersError) as e:
            client.get("/dedicated/server")
        self.assertEqual(e.exception.response.json()["errorCode"], "QUERY_TIME_OUT")
        self.assertIn("Query out of time", str(e.exception))

    def test_identical_requests_within_the_window_are_accepted(self):
        # The SDK legitimately repeats a GET within the same second.
        self.assertEqual(CLIENT.get("/dedicated/server"), CLIENT.get("/dedicated/server"))

    def test_an_unknown_application_key(self):
        keys = credentials("unknown-app")
        keys["application_key"] = "0" * len(keys["application_key"])
        client = ovh.Client(config_file=write_conf("unknown-app", keys))
        with self.assertRaises(ovh.exceptions.InvalidKey) as e:
            client.get("/dedicated/server")
        self.assertIn("Invalid application key", str(e.exception))

    def test_an_unknown_consumer_key(self):
        keys = credentials("unknown-ck")
        keys["consumer_key"] = "0" * len(keys["consumer_key"])
        client = ovh.Client(config_file=write_conf("unknown-ck", keys))
        with self.assertRaises(ovh.exceptions.InvalidCredential) as e:
            client.get("/dedicated/server")
        self.assertIn("This credential does not exist", str(e.exception))

    def test_a_consumer_key_of_another_application(self):
        mine = credentials("app-a")
        other = credentials("app-b")
        keys = dict(mine, consumer_key=other["consumer_key"])
        client = ovh.Client(config_file=write_conf("app-a-with-b", keys))
        with self.assertRaises(ovh.exceptions.InvalidCredential):
            client.get("/dedicated/server")

    def test_access_rules_refuse_what_they_do_not_grant(self):
        add_server("sdk-rules", "52:54:00:5d:00:10")
        client = client_for("read-list", "--rule", "GET:/dedicated/server")
        self.assertIn("sdk-rules", client.get("/dedicated/server"))
        # `/dedicated/server` does not grant `/dedicated/server/*`.
        with self.assertRaises(ovh.exceptions.NotGrantedCall) as e:
            client.get("/dedicated/server/sdk-rules")
        self.assertIn("This call has not been granted", str(e.exception))
        with self.assertRaises(ovh.exceptions.NotGrantedCall):
            client.post(
                "/dedicated/server/sdk-rules/reinstall",
                operatingSystem="byoi_64",
                customizations={"imageURL": "http://images.test/a.qcow2"},
            )
        # Refused before anything happened.
        with self.assertRaises(ovh.exceptions.ResourceNotFoundError):
            CLIENT.get("/dedicated/server/sdk-rules/install/status")

    def test_a_revoked_credential_stops_working(self):
        client = client_for("to-revoke")
        self.assertIsInstance(client.get("/dedicated/server"), list)
        byoi("credentials", "revoke", "to-revoke")
        with self.assertRaises((ovh.exceptions.InvalidKey, ovh.exceptions.InvalidCredential)):
            client.get("/dedicated/server")
        listed = byoi("credentials", "list")
        apps = [line.split()[0] for line in listed.splitlines()[1:]]
        self.assertIn("sdk", apps)
        self.assertNotIn("to-revoke", apps)
        # The list shows application keys, never a secret.
        self.assertIn(KEYS["application_key"], listed)
        self.assertNotIn(KEYS["application_secret"], listed)
        self.assertNotIn(KEYS["consumer_key"], listed)


class ConsumerKeyFlow(unittest.TestCase):
    """OVHcloud's flow: the application asks for a consumer key with access
    rules; an operator validates it (byoi's CLI or its validation URL)."""

    @classmethod
    def setUpClass(cls):
        add_server("sdk-ck", "52:54:00:5d:00:20")
        cls.app = write_conf("app-only", credentials("app-only", "--application-only"))

    def request_read_only(self):
        client = ovh.Client(config_file=self.app)
        ck = client.new_consumer_key_request()
        ck.add_recursive_rules(ovh.API_READ_ONLY, "/dedicated/server")
        r = ck.request()
        self.assertEqual(r["state"], "pendingValidation")
        self.assertEqual(client._consumer_key, r["consumerKey"])
        url = urllib.parse.urlsplit(r["validationUrl"])
        self.assertTrue(r["validationUrl"].startswith(URL + "/"), r["validationUrl"])
        self.assertTrue(url.path.endswith("/auth/validate"), r["validationUrl"])
        self.assertIn("credentialToken", urllib.parse.parse_qs(url.query))
        return client, r["validationUrl"]

    def assert_read_only(self, client):
        self.assertIn("sdk-ck", client.get("/dedicated/server"))
        self.assertEqual(client.get("/dedicated/server/sdk-ck")["name"], "sdk-ck")
        with self.assertRaises(ovh.exceptions.NotGrantedCall):
            client.post("/dedicated/server/sdk-ck/reinstall", operatingSystem="byoi_64", customizations={})
        c = client.get("/auth/currentCredential")
        self.assertEqual(c["status"], "validated")
        rules = sorted((r["method"], r["path"]) for r in c["rules"])
        self.assertEqual(rules, [("GET", "/dedicated/server"), ("GET", "/dedicated/server/*")])

    def test_validated_with_the_cli(self):
        client, validation = self.request_read_only()
        with self.assertRaises(ovh.exceptions.InvalidCredential) as e:
            client.get("/dedicated/server")
        self.assertIn("This credential is not valid", str(e.exception))
        byoi("credentials", "validate", validation)
        self.assert_read_only(client)

    def test_validated_through_the_validation_url(self):
        client, validation = self.request_read_only()
        page = requests.get(validation, timeout=30)
        self.assertEqual(page.status_code, 200)
        self.assertIn("text/html", page.headers["Content-Type"])
        self.assertIn("/dedicated/server/*", page.text)
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(validation).query)["credentialToken"][0]
        form = {"credentialToken": token, "apiToken": "not-" + TOKEN, "action": "validate"}
        wrong = requests.post(validation, data=form, timeout=30)
        self.assertIn(wrong.status_code, (401, 403), wrong.text)
        self.assertNotIn(TOKEN, wrong.text)
        with self.assertRaises(ovh.exceptions.InvalidCredential):
            client.get("/dedicated/server")
        ok = requests.post(validation, data=dict(form, apiToken=TOKEN), timeout=30)
        self.assertEqual(ok.status_code, 200, ok.text)
        self.assert_read_only(client)

    def test_refused_through_the_validation_url(self):
        client, validation = self.request_read_only()
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(validation).query)["credentialToken"][0]
        form = {"credentialToken": token, "apiToken": TOKEN, "action": "refuse"}
        r = requests.post(validation, data=form, timeout=30)
        self.assertEqual(r.status_code, 200, r.text)
        with self.assertRaises(ovh.exceptions.InvalidCredential) as e:
            client.get("/dedicated/server")
        self.assertIn("This credential is not valid", str(e.exception))


def reinstall_body(**customizations):
    c = {
        "imageURL": "http://images.test/debian.qcow2",
        "imageType": "qcow2",
        "imageCheckSum": SHA256,
        "imageCheckSumType": "sha256",
        "httpHeaders": {"X-Image-Key": "k"},
        "configDriveUserData": "#cloud-config\npackages: [nginx]\n",
        "configDriveMetadata": {"role": "web"},
        "efiBootloaderPath": "\\efi\\debian\\grubx64.efi",
        "hostname": "web1",
        "sshKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE5wqBvrmE2aJ5YNmsmLsjeJt0Rd3ZbY0vtq8Q5XpVgE sdk@test",
    }
    c.update(customizations)
    return {"operatingSystem": "byoi_64", "customizations": c, "storage": [{"diskGroupId": 1}]}


class Servers(unittest.TestCase):
    def test_list_and_show(self):
        add_server("sdk-show", "52:54:00:5d:00:30")
        self.assertIn("sdk-show", CLIENT.get("/dedicated/server"))
        s = CLIENT.get("/dedicated/server/sdk-show")
        self.assertEqual(s["name"], "sdk-show")
        self.assertEqual(s["state"], "ok")
        self.assertIsInstance(s["bootId"], int)
        self.assertIsInstance(s["serverId"], int)
        # byoi's own fields stay.
        self.assertEqual(s["serviceName"], "sdk-show")
        self.assertEqual(s["macs"], ["52:54:00:5d:00:30"])

    def test_a_missing_server(self):
        for call in (
            lambda: CLIENT.get("/dedicated/server/nowhere"),
            lambda: CLIENT.get("/dedicated/server/nowhere/task"),
            lambda: CLIENT.post("/dedicated/server/nowhere/reinstall", **reinstall_body()),
        ):
            with self.assertRaises(ovh.exceptions.ResourceNotFoundError) as e:
                call()
            self.assertIn("The requested object (serviceName = nowhere) does not exist", str(e.exception))
            self.assertEqual(e.exception.response.json()["class"], "Client::NotFound")

    def test_invalid_bodies(self):
        add_server("sdk-invalid", "52:54:00:5d:00:40")
        path = "/dedicated/server/sdk-invalid/"
        with self.assertRaises(ovh.exceptions.BadParametersError) as e:
            CLIENT.post(path + "bringYourOwnImage", URL="http://images.test/a.qcow2", checkSum=SHA256)
        self.assertIn(CHECKSUM_PAIR, str(e.exception))
        self.assertEqual(e.exception.response.json()["class"], "Client::BadRequest")
        with self.assertRaises(ovh.exceptions.BadParametersError) as e:
            CLIENT.post(path + "reinstall", **reinstall_body(imageCheckSumType=None))
        self.assertIn(CHECKSUM_PAIR, str(e.exception))
        with self.assertRaises(ovh.exceptions.BadParametersError) as e:
            CLIENT.post(path + "reinstall", **dict(reinstall_body(), operatingSystem="debian12_64"))
        self.assertIn("debian12_64", str(e.exception))
        # Nothing was started.
        self.assertEqual(CLIENT.get(path + "task"), [])


class Deployments(unittest.TestCase):
    """Deployments driven with the SDK, the agent simulated."""

    def task(self, server, task_id):
        return CLIENT.get(f"/dedicated/server/{server}/task/{task_id}")

    def test_reinstall_to_done(self):
        name, mac = "sdk-reinstall", "52:54:00:5d:00:50"
        add_server(name, mac)
        path = f"/dedicated/server/{name}"
        with self.assertRaises(ovh.exceptions.ResourceNotFoundError) as e:
            CLIENT.get(path + "/install/status")
        self.assertIn(NOT_INSTALLING, str(e.exception))

        task = CLIENT.post(path + "/reinstall", **reinstall_body())
        self.assertEqual(task["function"], "reinstallServer")
        self.assertEqual(task["status"], "todo")
        for field in ("taskId", "comment", "startDate", "doneDate", "lastUpdate"):
            self.assertIn(field, task)
        self.assertIsNone(task["doneDate"])
        task_id = task["taskId"]
        with self.assertRaises(ovh.exceptions.ResourceConflictError) as e:
            CLIENT.post(path + "/reinstall", **reinstall_body())
        self.assertIn("A deployment is already in progress", str(e.exception))
        waiting = CLIENT.get(path + "/install/status")["progress"]
        self.assertEqual([s["status"] for s in waiting], ["doing", "todo", "todo", "todo", "todo"])
        self.assertEqual(CLIENT.get(path + "/task", function="reinstallServer"), [task_id])
        self.assertEqual(CLIENT.get(path + "/task", function="reinstallServer", status="done"), [])
        self.assertEqual(CLIENT.get(path + "/task", function="hardReboot"), [])
        with self.assertRaises(ovh.exceptions.BadParametersError):
            CLIENT.get(path + "/task", function="not a function")
        self.assertEqual(self.task(name, task_id)["status"], "todo")

        agent = SimAgent(mac)
        agent.boot()
        agent.hello()
        job = agent.job()["job"]
        self.assertEqual(agent.deployment, task_id)
        # The customizations, as the agent receives them.
        spec = job["spec"]
        self.assertEqual(spec["url"], "http://images.test/debian.qcow2")
        self.assertEqual(spec["configdrive"]["hostname"], "web1")
        self.assertEqual(spec["configdrive"]["meta"], {"role": "web"})
        self.assertEqual(spec["efiLoader"], "\\efi\\debian\\grubx64.efi")
        self.assertEqual(job["disk"]["serial"], "S1")

        hw = CLIENT.get(path + "/specifications/hardware")
        g = hw["diskGroups"][0]
        self.assertEqual(g["diskGroupId"], 1)
        self.assertEqual(g["numberOfDisks"], 2)
        self.assertEqual(g["diskSize"], {"unit": "GB", "value": 480})
        self.assertEqual(hw["diskGroups"][1]["diskGroupId"], 2)
        self.assertEqual(hw["memorySize"], {"unit": "MB", "value": 16384})
        self.assertEqual(hw["bootMode"], "uefi")

        agent.progress("downloading", 300)
        doing = self.task(name, task_id)
        self.assertEqual(doing["status"], "doing")
        status = CLIENT.get(path + "/install/status")
        self.assertIsInstance(status["elapsedTime"], int)
        steps = status["progress"]
        self.assertTrue(steps, status)
        for step in steps:
            self.assertEqual(set(step), {"comment", "status", "error"}, step)
        self.assertEqual([s["status"] for s in steps], ["done", "doing", "todo", "todo", "todo"])
        self.assertEqual({s["error"] for s in steps}, {""})
        agent.progress("writing", 1000)
        agent.progress("finishing", 1000)
        agent.result("done", message="deployed")

        done = self.task(name, task_id)
        self.assertEqual(done["status"], "done")
        self.assertIsNotNone(done["doneDate"])
        self.assertEqual(CLIENT.get(path + "/task", status="done"), [task_id])
        with self.assertRaises(ovh.exceptions.ResourceNotFoundError) as e:
            CLIENT.get(path + "/install/status")
        self.assertIn(NOT_INSTALLING, str(e.exception))

    def test_reinstall_to_customer_error(self):
        name, mac = "sdk-fail", "52:54:00:5d:00:60"
        add_server(name, mac)
        path = f"/dedicated/server/{name}"
        task_id = CLIENT.post(path + "/reinstall", **reinstall_body())["taskId"]
        agent = SimAgent(mac)
        agent.boot()
        agent.hello()
        agent.job()
        agent.progress("downloading", 1000)
        message = "the image's sha256 is 0000, not the expected 9f86"
        agent.result("error", code="checksum-mismatch", message=message)
        failed = self.task(name, task_id)
        self.assertEqual(failed["status"], "customerError")
        self.assertIn(message, failed["comment"])
        self.assertEqual(CLIENT.get(path + "/task", status="customerError"), [task_id])

    def test_legacy_bring_your_own_image(self):
        name, mac = "sdk-legacy", "52:54:00:5d:00:70"
        add_server(name, mac)
        path = f"/dedicated/server/{name}/bringYourOwnImage"
        with self.assertRaises(ovh.exceptions.ResourceNotFoundError):
            CLIENT.get(path)
        posted = CLIENT.post(
            path,
            URL="http://images.test/debian.qcow2",
            checkSum=SHA256,
            checkSumType="sha256",
            type="qcow2",
            configdrive={"enable": True, "hostname": "legacy1", "userMetadatas": {"role": "db"}},
        )
        self.assertEqual(posted["status"], "doing")
        with self.assertRaises(ovh.exceptions.ResourceConflictError):
            CLIENT.post(path, URL="http://images.test/debian.qcow2")
        # The same deployment is a reinstallServer task.
        tasks = CLIENT.get(f"/dedicated/server/{name}/task", function="reinstallServer")
        self.assertEqual(tasks, [posted["deploymentId"]])
        agent = SimAgent(mac)
        agent.boot()
        agent.hello()
        self.assertEqual(agent.job()["job"]["spec"]["configdrive"]["hostname"], "legacy1")
        agent.progress("downloading", 500)
        shown = CLIENT.get(path)
        self.assertEqual(shown["status"], "doing")
        self.assertEqual(shown["checksum"], SHA256)
        erased = CLIENT.delete(path)
        self.assertEqual(erased["deploymentId"], posted["deploymentId"])
        self.assertEqual(
            CLIENT.get(f"/dedicated/server/{name}/task/{posted['deploymentId']}")["status"],
            "cancelled",
        )


class Metrics(unittest.TestCase):
    """`/metrics`, read as Prometheus reads it: parsed by prometheus_client's
    OpenMetrics parser, which refuses a malformed exposition."""

    def scrape(self):
        r = bearer("GET", "/metrics")
        self.assertEqual(r.status_code, 200, r.text)
        self.assertTrue(r.headers["Content-Type"].startswith("application/openmetrics-text"))
        return {f.name: f for f in text_string_to_metric_families(r.text)}

    def test_a_deployment_and_its_calls_are_counted(self):
        name, mac = "sdk-metrics", "52:54:00:5d:00:90"
        add_server(name, mac)
        before = self.scrape()
        CLIENT.post(f"/dedicated/server/{name}/reinstall", **reinstall_body())
        agent = SimAgent(mac)
        agent.boot()
        agent.hello()
        agent.job()
        agent.progress("downloading", 1000, 1000)
        agent.result("done", message="deployed")
        after = self.scrape()
        kinds = {n: f.type for n, f in after.items()}
        for family, kind in [
            ("byoi_http_requests", "counter"),
            ("byoi_http_request_duration_seconds", "histogram"),
            ("byoi_agent_call_duration_seconds", "histogram"),
            ("byoi_power_actions", "counter"),
            ("byoi_deployments", "gauge"),
            ("byoi_deployment_duration_seconds", "histogram"),
            ("byoi_deployment_throughput_bytes_per_second", "histogram"),
            ("byoi_bytes_written", "counter"),
            ("byoi_agents_online", "gauge"),
            ("byoi_servers", "gauge"),
        ]:
            self.assertEqual(kinds.get(family), kind, family)

        def value(families, family, sample, **labels):
            for s in families[family].samples if family in families else []:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
            return 0

        done = dict(status="done", error_code="")
        self.assertEqual(value(after, "byoi_deployments", "byoi_deployments", **done),
                         value(before, "byoi_deployments", "byoi_deployments", **done) + 1)
        self.assertGreaterEqual(value(after, "byoi_bytes_written", "byoi_bytes_written_total"), 1000)
        self.assertGreaterEqual(value(after, "byoi_agents_online", "byoi_agents_online"), 1)
        count = "byoi_deployment_duration_seconds_count"
        self.assertEqual(value(after, "byoi_deployment_duration_seconds", count),
                         value(before, "byoi_deployment_duration_seconds", count) + 1)
        calls = "byoi_agent_call_duration_seconds_count"
        self.assertGreaterEqual(value(after, "byoi_agent_call_duration_seconds", calls, call="result"), 1)
        reinstall = dict(route="/dedicated/server/{serviceName}/reinstall", method="POST", status="200")
        self.assertGreaterEqual(value(after, "byoi_http_requests", "byoi_http_requests_total", **reinstall), 1)
        self.assertNotIn(name, bearer("GET", "/metrics").text, "no server name in a label")


if __name__ == "__main__":
    unittest.main(verbosity=2)
