"""The load `workbench bench serve` puts on one endpoint: a locust file, run by the `locust` command in
its own process (locust patches the standard library with gevent, so nothing of the workbench is
imported here).

Each simulated user sends its next request as soon as the last one is answered (a closed loop:
`--users` is the concurrency), a test query drawn at random, to $WB_CHANNEL with beam width
$WB_WIDTH (generative; unset: the width the server serves) and $WB_K products. Anything but a 200 with a product list is a failure.
"""

import json
import os
import random

from locust import FastHttpUser, constant, task

QUERIES = json.load(open(os.environ["WB_QUERIES"]))
CHANNEL = os.environ["WB_CHANNEL"]
BODY = {"k": int(os.environ.get("WB_K", "100"))}
if CHANNEL == "generative" and os.environ.get("WB_WIDTH"):
    BODY["width"] = int(os.environ["WB_WIDTH"])


class Searcher(FastHttpUser):
    wait_time = constant(0)

    def on_start(self):
        self.rng = random.Random(id(self))

    @task
    def search(self):
        body = {**BODY, "query": self.rng.choice(QUERIES)}
        with self.client.post(f"/{CHANNEL}", json=body, name=CHANNEL, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif "products" not in r.json():
                r.failure("no products in the answer")
