"""Publishes one update through the PyPI `mercure-publisher` package (a
Mercure publisher library nobody in this repository wrote), for
tests/it/node_client.rs. Prints one JSON line: {"id": <the id the hub
answered>}, or {"status": <HTTP status>, "body": <response body>} (exit 3)
when the hub refused the update.

Usage: python publish.py '<json options>'
  hub_url   e.g. http://127.0.0.1:3000/.well-known/mercure
  key       the publisher JWT key (HS256); the library mints the token
  publish   the token's mercure.publish selectors
  topic     a topic or a list of topics
  data      the update's data (a string)
  private   optional bool
  type      optional SSE event type
"""

import json
import sys

from mercure_publisher import MercureConfig, MercurePublisher, MercurePublishError

options = json.loads(sys.argv[1])
config = MercureConfig(
    hub_url=options["hub_url"],
    publisher_jwt_key=options["key"],
    publish_topics=options["publish"],
    # No Redis token cache: the library then mints a token per publisher.
    redis_config=None,
)
with MercurePublisher(config) as publisher:
    try:
        update_id = publisher.publish(
            options["topic"],
            options["data"],
            private=options.get("private", False),
            type=options.get("type"),
        )
    except MercurePublishError as err:
        print(json.dumps({"status": err.status_code, "body": err.response_body}))
        sys.exit(3)
print(json.dumps({"id": update_id}))
