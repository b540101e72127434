// Moat console: live updates over Server-Sent Events and confirmations before destructive
// actions. The pages work without it. It never builds HTML from data: text goes through
// textContent only.
'use strict';
(function () {
  // Confirm before submitting forms that carry data-confirm (revoke, quarantine).
  document.addEventListener('submit', function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm &&
        !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  if (document.body.dataset.live !== 'on' || !window.EventSource) {
    return;
  }
  var status = document.getElementById('live-status');
  function setStatus(text, on) {
    if (status) {
      status.textContent = text;
      status.classList.toggle('on', on);
    }
  }
  var source = new EventSource('/console/events');
  source.addEventListener('open', function () { setStatus('live', true); });
  source.addEventListener('error', function () { setStatus('reconnecting…', false); });
  source.addEventListener('ended', function () {
    source.close();
    setStatus('session ended: reload to log in', false);
  });
  source.addEventListener('online', function (e) {
    var data = JSON.parse(e.data);
    document.querySelectorAll('[data-live="online"]').forEach(function (el) {
      el.textContent = String(data.online);
    });
  });
  source.addEventListener('device', function (e) {
    var data = JSON.parse(e.data);
    document.querySelectorAll('[data-device]').forEach(function (el) {
      if (el.dataset.device === data.id) {
        el.textContent = data.online ? 'online' : 'offline';
        el.classList.toggle('on', data.online);
        el.classList.toggle('off', !data.online);
      }
    });
  });
  var feed = document.getElementById('live-audit');
  source.addEventListener('audit', function (e) {
    if (!feed) {
      return;
    }
    var d = JSON.parse(e.data);
    var li = document.createElement('li');
    li.className = 'fresh';
    var seq = document.createElement('span');
    seq.className = 'seq';
    seq.textContent = '#' + d.seq + ' ';
    var action = document.createElement('strong');
    action.textContent = d.action;
    var outcome = document.createElement('span');
    outcome.className = 'outcome ' + d.outcome;
    outcome.textContent = d.outcome;
    li.append(seq, d.at + ' ', action, ' ' + d.subject + ' by ' + d.actor + ' ', outcome);
    feed.prepend(li);
    while (feed.children.length > 20) {
      feed.lastElementChild.remove();
    }
  });
})();
