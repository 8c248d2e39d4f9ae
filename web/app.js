// sse-fanout page: live event list over EventSource, plus the account form.
// All untrusted text goes through textContent, never innerHTML.
(function () {
  'use strict';

  var MAX_ROWS = 200;        // rows kept in the list
  var MAX_SEEN = 5000;       // ids remembered for de-duplication (well above MAX_ROWS)
  var RETRY_MIN_MS = 1000;   // backoff when the browser gives up (readyState CLOSED)
  var RETRY_MAX_MS = 15000;

  var $ = function (id) { return document.getElementById(id); };
  var stateEl = $('state');
  var serverIdEl = $('server-id');
  var listEl = $('events');
  var noticeEl = $('notice');
  var noticeText = $('notice-text');
  var form = $('account-form');
  var nameInput = $('name');
  var balanceInput = $('balance');
  var submitBtn = $('create');
  var resultEl = $('result');
  var errorEls = { name: $('name-error'), balance: $('balance-error') };
  var inputs = { name: nameInput, balance: balanceInput };

  var topicForm = $('topic-form');
  var topicInput = $('topic');

  var state = 'connecting';
  var topic = '*';           // the selector the stream is subscribed to (SPEC §8.2)
  var serverId = null;
  var lastEventId = '';
  var seen = new Set();      // insertion-ordered, so the oldest id is evicted first
  var es = null;
  var retryTimer = null;
  var retryDelay = RETRY_MIN_MS;

  function setState(s) {
    state = s;
    stateEl.textContent = s;
    stateEl.setAttribute('data-state', s);
  }

  // ---- EventSource -------------------------------------------------------

  function connect() {
    retryTimer = null;
    setState(es ? 'reconnecting' : 'connecting');
    // A new EventSource cannot set Last-Event-ID, so the id travels in the query
    // string. The browser's own reconnects send the header, which the server prefers.
    var url = '/events/sse?topic=' + encodeURIComponent(topic);
    if (lastEventId) url += '&lastEventId=' + encodeURIComponent(lastEventId);
    es = new EventSource(url);

    es.onopen = function () {
      retryDelay = RETRY_MIN_MS;
      setState('open');
    };

    es.onerror = function () {
      setState('reconnecting');
      // CONNECTING: the browser retries by itself (after the server's retry: hint).
      // CLOSED: it gave up (e.g. a 503 or a non-SSE answer from a proxy); retry ourselves.
      if (es.readyState === EventSource.CLOSED && !retryTimer) {
        es.close();
        var delay = retryDelay * (0.75 + Math.random() / 2); // jitter: don't stampede a restarted server
        retryDelay = Math.min(retryDelay * 2, RETRY_MAX_MS);
        retryTimer = setTimeout(connect, delay);
      }
    };

    es.addEventListener('connected', function (e) {
      var msg = parseJSON(e.data);
      if (msg && typeof msg.serverId === 'string') {
        serverId = msg.serverId;
        serverIdEl.textContent = serverId;
      }
    });

    es.addEventListener('reset', function (e) {
      var msg = parseJSON(e.data);
      var reason = msg && typeof msg.reason === 'string' ? msg.reason : 'unknown reason';
      showNotice('Some events may have been missed (' + reason + '). The list may be incomplete.');
    });

    es.onmessage = onMessage;
  }

  function onMessage(e) {
    var msg = parseJSON(e.data);
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return;
    // Use the JSON id for de-duplication, not e.lastEventId: for a message without
    // an id: line (published by another program) the browser repeats the previous id.
    var id = typeof msg.id === 'string' && msg.id ? msg.id : '';
    if (id) {
      if (seen.has(id)) return;
      seen.add(id);
      if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);
    }
    if (e.lastEventId || id) lastEventId = e.lastEventId || id;
    addRow(id, msg);
  }

  function parseJSON(text) {
    try { return JSON.parse(text); } catch (_) { return null; }
  }

  // ---- Topic -------------------------------------------------------------

  // Watching another topic: a new stream, an empty list, and the retained
  // history of that topic (`earliest`), so one account's stream shows its
  // past events too. Ids seen are forgotten so those events are shown again.
  topicForm.addEventListener('submit', function (ev) {
    ev.preventDefault();
    var next = topicInput.value.trim() || '*';
    topicInput.value = next;
    if (next === topic) return;
    topic = next;
    if (es) es.close();
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    seen.clear();
    while (listEl.firstChild) listEl.removeChild(listEl.firstChild);
    lastEventId = 'earliest';
    retryDelay = RETRY_MIN_MS;
    connect();
  });

  // ---- Event list --------------------------------------------------------

  function span(cls, text, label) {
    var el = document.createElement('span');
    el.className = cls;
    el.textContent = text;
    // The label is drawn by CSS (::before) so .textContent stays the bare value.
    if (label) el.setAttribute('data-label', label);
    return el;
  }

  function addRow(id, msg) {
    var data = msg.data && typeof msg.data === 'object' ? msg.data : null;
    var type = typeof msg.type === 'string' ? msg.type : '(no type)';
    var origin = msg.serverId || (data && data.serverId) || '';
    var when = new Date(msg.timestamp || (data && data.createdAt) || Date.now());
    if (isNaN(when.getTime())) when = new Date();

    var li = document.createElement('li');
    li.className = 'event';
    li.setAttribute('data-event-id', id);
    li.setAttribute('data-type', type);

    var head = document.createElement('div');
    head.className = 'event-head';
    head.appendChild(span('type', type));
    var time = document.createElement('time');
    time.className = 'time';
    time.dateTime = when.toISOString();
    time.title = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    head.appendChild(time);
    li.appendChild(head);

    var body = document.createElement('div');
    body.className = 'event-body';
    if (data && data.name != null) body.appendChild(span('name', String(data.name)));
    if (data && data.balance != null) body.appendChild(span('balance', String(data.balance), 'balance'));
    if (origin) body.appendChild(span('origin', String(origin), 'from'));
    if (Array.isArray(msg.topics) && msg.topics.length) {
      body.appendChild(span('topics', msg.topics.map(String).join(' '), 'topics'));
    }
    if (!data || (data.name == null && data.balance == null)) {
      // Foreign message: show whatever else it carries, briefly.
      var rest = {};
      Object.keys(msg).forEach(function (k) {
        if (k !== 'type' && k !== 'serverId' && k !== 'timestamp' && k !== 'topics') rest[k] = msg[k];
      });
      var extra = JSON.stringify(rest);
      if (extra && extra !== '{}') {
        body.appendChild(span('extra', extra.length > 160 ? extra.slice(0, 159) + '…' : extra));
      }
    }
    li.appendChild(body);

    listEl.insertBefore(li, listEl.firstChild);
    while (listEl.children.length > MAX_ROWS) listEl.removeChild(listEl.lastElementChild);
  }

  // ---- Notice ------------------------------------------------------------

  function showNotice(text) {
    noticeText.textContent = text;
    noticeEl.hidden = false;
  }

  $('notice-dismiss').addEventListener('click', function () {
    noticeEl.hidden = true;
    noticeText.textContent = '';
  });

  // ---- Form --------------------------------------------------------------

  function clearErrors() {
    ['name', 'balance'].forEach(function (f) {
      errorEls[f].textContent = '';
      inputs[f].removeAttribute('aria-invalid');
    });
    resultEl.textContent = '';
    resultEl.classList.remove('error', 'ok');
    resultEl.removeAttribute('role');
  }

  function showResult(text, isError) {
    resultEl.textContent = text;
    resultEl.classList.add(isError ? 'error' : 'ok');
    if (isError) resultEl.setAttribute('role', 'alert');
  }

  function showError(message) {
    // The server's message starts with the field name ("balance: must be …").
    var m = /^(name|balance)\s*:/.exec(message);
    if (m) {
      errorEls[m[1]].textContent = message;
      inputs[m[1]].setAttribute('aria-invalid', 'true');
      inputs[m[1]].focus();
    } else {
      showResult(message, true);
    }
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    clearErrors();
    var raw = balanceInput.value.trim();
    // Send integer literals as numbers; anything else as the raw string so the
    // server rejects it with its own message (one source of validation rules).
    var balance = /^-?\d+$/.test(raw) ? Number(raw) : raw;
    var body = JSON.stringify({ name: nameInput.value, balance: balance });

    submitBtn.disabled = true;
    fetch('/accounts', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: body
    }).then(function (res) {
      return res.text().then(function (text) {
        var json = parseJSON(text);
        if (res.status === 201 && json) {
          showResult('Created account "' + json.name + '" (id ' + json.id + ', balance ' +
            json.balance + ') on ' + json.serverId + '.', false);
          form.reset();
          nameInput.focus();
        } else if (json && json.error && typeof json.error.message === 'string') {
          showError(json.error.message);
        } else {
          showResult('Request failed: HTTP ' + res.status + (res.statusText ? ' ' + res.statusText : ''), true);
        }
      });
    }).catch(function (err) {
      showResult('Network error: ' + (err && err.message ? err.message : err), true);
    }).then(function () {
      submitBtn.disabled = false;
    });
  });

  // ---- Debug hook (used by browser tests) --------------------------------

  window.sseFanout = {
    state: function () { return state; },
    serverId: function () { return serverId; },
    lastEventId: function () { return lastEventId; },
    topic: function () { return topic; },
    // Ids received since the page loaded (capped), in arrival order: oldest first.
    events: function () { return Array.from(seen); }
  };

  connect();
})();
