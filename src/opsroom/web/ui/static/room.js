// The room page's only script, served from /static so the CSP can forbid inline script.
(() => {
  const data = JSON.parse(document.getElementById('room-data').textContent);
  const room = data.room, me = data.me, myRoles = data.roles || [];
  let approvals = data.approvals;
  const log = document.getElementById('log'), box = document.getElementById('approvals'),
        runsBox = document.getElementById('runs'), conn = document.getElementById('conn');
  const seen = new Set([...log.children].map(li => +li.dataset.id));
  let ws, delay = 500, queue = [];
  const hm = t => new Date(t * 1000).toTimeString().slice(0, 5);
  document.querySelectorAll('time[data-at]').forEach(t => { t.textContent = hm(+t.dataset.at); });
  const bottom = () => { log.scrollTop = log.scrollHeight; };
  bottom();

  // The newest message id this page holds: a reconnect asks the server for everything after it.
  let newest = Math.max(0, ...[...seen].filter(Boolean));

  // Being asked when away: a page in a background tab tells its person, through the browser's
  // notifications, of a request they may decide (one naming a role of theirs) and of a line that
  // mentions them as @name. Permission is asked only from the header button (a user gesture).
  const bell = document.getElementById('notify');
  const canNotify = () => 'Notification' in window && Notification.permission === 'granted';
  function drawBell() {
    bell.hidden = !('Notification' in window) || Notification.permission !== 'default';
  }
  bell.onclick = () => { Notification.requestPermission().then(drawBell, drawBell); };
  drawBell();
  function notify(title, body, tag) {
    if (!document.hidden || !canNotify()) return;
    try {
      const n = new Notification(title, {body: body, tag: tag});
      n.onclick = () => { window.focus(); n.close(); };
    } catch (e) { /* a browser that only notifies from a service worker: the page still shows it */ }
  }
  const mention = new RegExp('(^|[^\\w@.-])@' + me.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + '(?![\\w-])', 'i');
  const asksMe = a => a.can_decide && (myRoles.includes('admin') || a.roles.some(r => myRoles.includes(r)));
  const known = new Set(approvals.map(a => a.id));  // what the page showed when it loaded: not news
  function newRequests(items) {
    for (const a of items) {
      if (!known.has(a.id) && asksMe(a)) {
        notify('opsroom: approval needed #' + a.id, a.summary + ' — by ' + a.requester, 'approval-' + a.id);
      }
      known.add(a.id);
    }
  }

  function add(m) {
    if (m.id && seen.has(m.id)) return;
    // People's lines only: the bot's answers may quote a line back, and requests come as approvals.
    if (m.kind === 'person' && m.author !== me && mention.test(m.text)) {
      notify('opsroom: ' + m.author + ' in #' + room, m.text.slice(0, 200), 'mention-' + (m.id || ''));
    }
    const late = m.id && m.id < newest;
    if (m.id) { seen.add(m.id); newest = Math.max(newest, m.id); }
    const li = document.createElement('li'); li.className = m.kind; if (m.id) li.dataset.id = m.id;
    const t = document.createElement('time'); t.textContent = hm(m.at || Date.now() / 1000); li.append(t);
    if (m.kind !== 'notice') {
      const w = document.createElement('span'); w.className = 'who'; w.textContent = m.author; li.append(w);
    }
    li.append(document.createTextNode(m.text));
    // Stored messages stand in id order even if one arrives late; the page's own notes go last.
    const later = late && [...log.children].find(x => +x.dataset.id > m.id);
    if (later) log.insertBefore(li, later); else log.append(li);
    bottom();
  }

  function gap(text) {
    const li = document.createElement('li'); li.className = 'notice gap'; li.append(text + ' ');
    const b = document.createElement('button'); b.textContent = 'Reload'; b.onclick = () => location.reload();
    li.append(b); log.append(li); bottom();
  }

  function output(o) {
    let p = document.getElementById('x' + o.execution_id);
    if (!p) {
      const li = document.createElement('li'); li.className = 'notice';
      li.textContent = 'execution #' + o.execution_id + ' output';
      p = document.createElement('pre'); p.id = 'x' + o.execution_id; li.append(p); log.append(li);
    }
    p.textContent = (p.textContent + o.text).slice(-4000); p.scrollTop = p.scrollHeight; bottom();
  }

  // Each button carries the request's decision token (from the server, per session and request
  // version): a decision is the press of this button, not something a guessed id can forge.
  function drawApprovals() {
    box.replaceChildren(...approvals.map(a => {
      const d = document.createElement('div'); d.className = 'req'; d.dataset.id = a.id;
      const s = document.createElement('span'), b = document.createElement('b');
      b.textContent = '#' + a.id; s.append(b, ' ' + a.summary + ' — by ' + a.requester + ', needs ' + a.roles.join(' or '));
      d.append(s);
      if (a.can_decide && a.token) {
        for (const [label, dec, cls] of [['Approve', 'approve', 'ok'], ['Deny', 'deny', 'no']]) {
          const btn = document.createElement('button'); btn.textContent = label; btn.className = cls;
          btn.onclick = () => {
            const f = {type: 'decide', id: a.id, decision: dec, token: a.token};
            if (dec === 'deny') { const r = prompt('Why deny #' + a.id + '?'); if (!r) return; f.reason = r; }
            send(f); btn.disabled = true;
          };
          d.append(btn);
        }
      }
      return d;
    }));
  }
  drawApprovals();

  // Runs going on in this room; a Cancel button on those this person may cancel (its requester, an
  // approver, an admin), carrying the server's cancel token for this session and run.
  const STATUS = {running: 'running', pending: 'starting', awaiting_approval: 'awaiting approval'};
  function drawRuns(items) {
    runsBox.replaceChildren(...items.map(x => {
      const d = document.createElement('div'); d.className = 'run'; d.dataset.id = x.id;
      const s = document.createElement('span'), b = document.createElement('b');
      b.textContent = '#' + x.id;
      s.append(b, ' ' + x.summary + ' — ' + (STATUS[x.status] || x.status) + ', by ' + x.requester);
      d.append(s);
      if (x.can_cancel && x.token) {
        const btn = document.createElement('button'); btn.textContent = 'Cancel'; btn.className = 'no';
        btn.onclick = () => {
          if (!confirm('Cancel execution #' + x.id + ' (' + x.summary + ')?')) return;
          send({type: 'cancel', id: x.id, token: x.token}); btn.disabled = true; btn.textContent = 'Cancelling…';
        };
        d.append(btn);
      }
      return d;
    }));
  }

  function send(f) {
    const s = JSON.stringify(f);
    if (ws && ws.readyState === 1) ws.send(s); else queue.push(s);
  }

  function connect() {
    ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/rooms/' +
                       encodeURIComponent(room) + '/ws?after=' + newest);
    ws.onopen = () => { conn.textContent = 'live'; delay = 500; while (queue.length) ws.send(queue.shift()); };
    ws.onmessage = e => {
      const f = JSON.parse(e.data);
      if (f.type === 'message') add(f);
      else if (f.type === 'approvals') { approvals = f.items; drawApprovals(); newRequests(approvals); }
      else if (f.type === 'executions') drawRuns(f.items);
      else if (f.type === 'output') output(f);
      else if (f.type === 'gap') gap(f.text);
      else if (f.type === 'error') add({kind: 'bot', author: 'opsroom', text: f.text, at: Date.now() / 1000});
    };
    ws.onclose = e => {
      conn.textContent = 'reconnecting…';
      if (e.code === 4401) { location.href = '/login?next=' + encodeURIComponent(location.pathname); return; }
      setTimeout(connect, delay); delay = Math.min(delay * 2, 10000);
    };
  }
  connect();

  // `approve 12` typed here is the same deliberate act as the button: it carries that token.
  document.getElementById('say').onsubmit = e => {
    e.preventDefault();
    const i = document.getElementById('text'), t = i.value.trim();
    if (!t) return;
    const f = {type: 'say', text: t};
    const m = /^\s*[!/]?\s*(approve|deny)\s+#?(\d+)/i.exec(t);
    if (m) { const a = approvals.find(x => x.id === +m[2]); if (a && a.token) f.token = a.token; }
    send(f); i.value = '';
  };
})();
