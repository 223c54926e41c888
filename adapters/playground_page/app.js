// Baton's playground: a tiny Slack-like chat page. Vanilla JS, no build step.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const USER_KEY = 'batonPlayground.user';
  const TONES = ['info', 'progress', 'success', 'warning', 'error', 'approval'];
  const UNREACHABLE = 'Could not reach the server. Is it running?';
  const S = {
    channels: [], users: [], bot: 'baton', user: '',
    channel: null, thread: null,          // what is open (ids as strings)
    msgs: new Map(),                      // String(id) -> newest Message we know
    es: null, down: false, unread: new Set(),
    drafts: new Map(),                    // 'c:<channel>' or 't:<thread>' -> unsent text typed there
    liveReplies: new Map(),               // thread id -> Set of reply ids that arrived live
    newest: new Map(),                    // channel -> highest top-level message id seen there (unread marks)
    pending: new Map(),                   // card ids clicked (accepted): buttons stay off until the bot answers
    // 'c:<channel>' or 't:<thread>' -> what of it is shown: from message id `from` on (0: from its beginning),
    // whether older messages are left to load (`more`), one `loading` now, or the `error` the last one had.
    // A channel reads its newest page; older pages come as the reader scrolls up.
    windows: new Map(),
  };
  let chanSeq = 0, threadSeq = 0;

  // ---------- helpers ----------
  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const esc = (s) => String(s == null ? '' : s).replace(/[&<>"']/g, (c) => ESC[c]);
  const dec = (s) => { try { return decodeURIComponent(s); } catch (_) { return s; } };
  const key = (id) => String(id);
  const isTop = (m) => m.thread_id == null || m.thread_id === '' || key(m.thread_id) === key(m.id);
  const rev = (m) => Number(m && m.revision) || 0;
  const byId = (a, b) => (Number(a.id) - Number(b.id)) || String(a.created_at).localeCompare(String(b.created_at));

  // escaped text with `inline code`, highlighted @mentions and links (input is raw text)
  function inline(text) {
    const segs = String(text == null ? '' : text).split('`');
    return segs.map((seg, i) => {
      if (i % 2 === 1 && i < segs.length - 1) return '<code>' + esc(seg) + '</code>';
      return (i % 2 === 1 ? '`' : '') + prose(seg);
    }).join('');
  }

  // A web address in text is a link, as Slack and Discord make one (a graph's "dashboard: https://..." could
  // not be clicked here). It is set aside while the text is escaped and marked up, so a mention or *bold*
  // is not looked for inside it, and *bold* around it still is.
  const URL_RE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
  function prose(seg) {
    const urls = [];
    const marked = seg.includes('\uE000') ? seg : seg.replace(URL_RE, (found) => {
      const url = urlOf(found);
      if (!/^https?:\/\/./i.test(url)) return found;
      urls.push(url);
      return '\uE000' + (urls.length - 1) + '\uE001' + found.slice(url.length);
    });
    return esc(marked).replace(/(^|[^\w@])@([\w.-]*\w)/g, '$1<span class="mention">@$2</span>')
      .replace(/(^|[\s(])\*([^*\n]+)\*(?=$|[\s.,:;!?)])/g, '$1<strong>$2</strong>')
      .replace(/\uE000(\d+)\uE001/g, (mark, n) => (n < urls.length ? '<a href="' + esc(urls[n]) +
        '" target="_blank" rel="noopener noreferrer">' + esc(urls[n]) + '</a>' : mark));
  }
  // Without what ends the sentence around it: "(see https://x.org/a_(b))." links https://x.org/a_(b).
  function urlOf(found) {
    let url = found;
    for (;;) {
      const last = url.slice(-1);
      const open = last === ')' && url.split('(').length >= url.split(')').length;
      if (!/[.,;:!?*_~\]]/.test(last) && (last !== ')' || open)) return url;
      url = url.slice(0, -1);
    }
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return '';
    const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    if (d.toDateString() === new Date().toDateString()) return t;
    return d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + t;
  }

  function hue(name) {
    let h = 7;
    for (const c of String(name)) h = (h * 31 + c.charCodeAt(0)) % 360;
    return h;
  }

  function detailText(data, res) {
    const d = data && data.detail;
    if (typeof d === 'string' && d) return d;
    if (Array.isArray(d)) return d.map(fieldError).join('; ');
    if (d) return JSON.stringify(d);
    const status = res.status + (res.statusText ? ' ' + res.statusText : '');
    // A server error with no reason of its own (a 500, a proxy's 502) said only "Request failed (500 ...)".
    if (res.status >= 500) return 'Something went wrong in Baton (' + status + '). Try again; if it keeps failing, Baton\'s log says why.';
    return 'Request failed (' + status + ')';
  }

  // A 422's item names its field in loc (["body", "text"]): "text: String should have at most 100000
  // characters", not the bare message, which does not say what it is about.
  function fieldError(x) {
    if (!x || !x.msg) return JSON.stringify(x);
    const field = (Array.isArray(x.loc) ? x.loc : []).filter((p) => typeof p === 'string' && p !== 'body' && p !== 'query').pop();
    return field ? field + ': ' + x.msg : x.msg;
  }

  async function api(path, opts = {}) {
    const init = { method: opts.method || 'GET', headers: { Accept: 'application/json' } };
    if (opts.body) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    let res;
    try { res = await fetch(path, init); } catch (_) {
      throw Object.assign(new Error(UNREACHABLE), { unreachable: true });
    }
    let data = null;
    try { data = await res.json(); } catch (_) { /* empty or non-JSON body */ }
    if (!res.ok) throw new Error(detailText(data, res));
    return data || {};
  }

  function showErr(el, msg, unreachable) {
    el.textContent = msg; el.hidden = !msg;
    el.dataset.unreachable = unreachable ? '1' : '';
  }
  // A list that is not shown (the channel behind an open thread on a phone: display: none) has no size:
  // scrolling it did nothing, and a channel drawn or sent a message meanwhile came back at its top (a thread
  // opened from a link) or short of its newest message. It notes whether it was at its end when it went
  // (data-at-end), ends there when drawn or added to meanwhile, and goes there once it is shown again.
  const below = (el) => el.scrollHeight - el.scrollTop - el.clientHeight; // what is under the visible part, px
  const nearBottom = (el) => (el.clientHeight ? below(el) < 80 : el.dataset.atEnd !== '0');
  function toEnd(list) {
    list.scrollTop = list.scrollHeight;
    if (!list.clientHeight) list.dataset.atEnd = '1';
  }
  function noteEnd(list) { // before it may be hidden
    if (list.clientHeight) list.dataset.atEnd = nearBottom(list) ? '1' : '0';
  }
  // An image (a digest's chart) has its height only once it is decoded, after its list was taken to its end:
  // the list grew by it, and the chart's lower part (and what follows it) stayed below the fold. A list
  // that was near its end before the image grew goes there again; one scrolled up is left where it is. (One
  // above what is shown is the browser's: it keeps what is shown in place.)
  function imageLoaded(list, img) {
    const r = img.getBoundingClientRect();
    if (list.clientHeight && r.top >= list.getBoundingClientRect().top && below(list) - r.height < 80) toEnd(list);
  }
  const shown = new ResizeObserver((entries) => {
    for (const { target } of entries) {
      if (!target.clientHeight) continue;
      if (target.dataset.atEnd === '1') target.scrollTop = target.scrollHeight;
      delete target.dataset.atEnd;
    }
  });
  const chanName = (id) => { const c = S.channels.find((x) => x.id === id); return c ? c.name : '#' + id; };

  // ---------- message store ----------
  function merge(m) { // from a fetch: keep the newer (or equal, to refresh reply_count)
    const cur = S.msgs.get(key(m.id));
    if (!cur || rev(cur) <= rev(m)) S.msgs.set(key(m.id), m);
    if (isTop(m)) seenTop(m);
  }
  function fresh(m) { // from an event/POST: only strictly newer revisions count
    const cur = S.msgs.get(key(m.id));
    if (cur && rev(cur) >= rev(m)) return false;
    // An event carries no reply count: an edited root keeps the one it had (it fell to "Reply in thread").
    if (cur && isTop(m)) m = Object.assign({}, m, { reply_count: cur.reply_count, last_reply_id: cur.last_reply_id });
    S.msgs.set(key(m.id), m);
    return true;
  }
  // Ids never go down on one database (messages are never deleted): a channel whose newest message, as
  // fetched (plus any that arrived live), is older than the newest the page noted is on a new database
  // (Baton started over on a new baton.db). Its note starts again there, or nothing newer than the old
  // database's ids would count as unread. True when so, or when the channel is read for the first time:
  // all of that channel is new to the reader.
  function renoteNewest(channel, fetched) {
    let have = 0;
    for (const m of [...fetched, ...S.msgs.values()]) {
      if (m.channel === channel && isTop(m)) have = Math.max(have, Number(m.id) || 0);
    }
    if (S.newest.has(channel) && have >= S.newest.get(channel)) return false;
    S.newest.set(channel, have);
    return true;
  }
  function seenTop(m) {
    const id = Number(m.id) || 0;
    if (id > (S.newest.get(m.channel) || 0)) S.newest.set(m.channel, id);
  }
  // A fetched root counts its replies up to last_reply_id; the live ones after it are added. (Counting in
  // the root itself lost a live reply when a channel read before it arrived after it, and counted twice one
  // stored while the page loaded.)
  function replyCount(root) {
    const id = key(root.id), last = Number(root.last_reply_id) || 0;
    let n = 0, live = 0;
    for (const r of S.msgs.values()) if (!isTop(r) && key(r.thread_id) === id) n++;
    for (const r of S.liveReplies.get(id) || []) if (r > last) live++;
    return Math.max((Number(root.reply_count) || 0) + live, n);
  }
  const repliesText = (n) => n + (n === 1 ? ' reply' : ' replies');

  // ---------- rendering ----------
  function linkHref(p) {
    if (p.channel) return '#/c/' + enc(p.channel) + (p.thread != null && p.thread !== '' ? '/t/' + enc(p.thread) : '');
    if (p.url && /^(https?:|#|\/)/i.test(p.url)) return p.url;
    return '#';
  }

  function renderPart(p, pending) {
    p = p || {};
    switch (p.kind) {
      case 'code':
        return '<pre class="part part-code"><code>' + esc(p.text) + '</code></pre>';
      case 'note':
        return '<div class="part part-note">' + inline(p.text) + '</div>';
      case 'link': {
        const href = linkHref(p);
        const ext = /^https?:/i.test(href) ? ' target="_blank" rel="noopener noreferrer"' : '';
        return '<div class="part part-link"><a href="' + esc(href) + '"' + ext + '>' + esc(p.label || p.url || 'open') + '</a></div>';
      }
      case 'buttons': {
        const a = esc(p.approval_id);
        const options = Array.isArray(p.options) && p.options.length ? p.options :
          [{value: 'approve', label: 'Approve', style: 'primary'}, {value: 'reject', label: 'Reject', style: 'danger'}];
        const buttons = options.map((o) => {
          const cls = o.value === 'approve' || o.value === 'reject' ? o.value : 'choice' + (o.style === 'primary' ? ' primary' : '');
          return '<button type="button" class="' + cls + '" data-approval-id="' + a + '" data-action="' + esc(o.value) + '"' +
            (pending ? ' disabled' : '') + '>' + esc(o.label) + '</button>';
        }).join('');
        return '<div class="part part-buttons">' + buttons + '<div class="error buttons-error" role="alert" hidden></div></div>';
      }
      case 'image': {
        const mime = /^image\/(svg\+xml|png|jpeg|gif)$/.test(p.mime || '') ? p.mime : 'application/octet-stream';
        const data = /^[A-Za-z0-9+\/=]*$/.test(p.data || '') ? p.data : '';
        return '<div class="part part-image"><img alt="' + esc(p.alt || 'image') + '" src="data:' + mime + ';base64,' + data + '"></div>';
      }
      default: // ```fenced``` blocks, as people type them, shown as code; dir="auto": right-to-left text reads right
        return String(p.text == null ? '' : p.text).split('```').map((chunk, i, all) => {
          if (i % 2 === 1 && i < all.length - 1) {
            return '<pre class="part part-code"><code>' + esc(chunk.replace(/^[^\n]*\n/, (line) => /^\w*\n$/.test(line) ? '' : line).replace(/\n$/, '')) + '</code></pre>';
          }
          const text = (i % 2 === 1 ? '```' : '') + chunk.replace(/^\n+|\n+$/g, '');
          return text ? '<div class="part part-text" dir="auto">' + inline(text) + '</div>' : '';
        }).join('');
    }
  }

  function replyLinkHtml(m) {
    const n = replyCount(m);
    return '<a class="replies-link' + (n ? '' : ' no-replies') + '" data-reply-count="' + n + '" href="#/c/' +
      esc(enc(m.channel)) + '/t/' + esc(enc(key(m.id))) + '">' + replyLinkText(n) + '</a>';
  }
  const replyLinkText = (n) => (n ? repliesText(n) : 'Reply in thread');

  function messageEl(m, inThread) {
    const c = m.content || {};
    const tone = m.is_bot && TONES.includes(c.tone) ? c.tone : null;
    const el = document.createElement('div');
    el.className = 'message' + (m.is_bot ? ' bot' : '') + (m.ephemeral ? ' ephemeral' : '') + (tone ? ' tone-' + tone : '');
    el.dataset.messageId = key(m.id);
    if (!inThread && key(m.id) === S.thread) el.classList.add('selected');
    const parts = Array.isArray(c.parts) && c.parts.length ? c.parts : [{ kind: 'text', text: m.text }];
    const when = new Date(m.created_at);
    el.innerHTML =
      '<div class="avatar" style="background:hsl(' + hue(m.user) + ',50%,' + (m.is_bot ? '32%' : '46%') + ')">' +
        esc(String(m.user || '?').charAt(0).toUpperCase()) + '</div>' +
      '<div class="body"><div class="meta"><span class="author">' + esc(m.user) + '</span>' +
        (m.is_bot ? '<span class="app-badge">APP</span>' : '') +
        '<time datetime="' + esc(m.created_at) + '" title="' + esc(isNaN(when) ? '' : when.toLocaleString()) + '">' + esc(fmtTime(m.created_at)) + '</time>' +
        (m.ephemeral ? '<span class="ephemeral-label">Only visible to you</span>' : '') + '</div>' +
        (c.title ? '<div class="title">' + inline(c.title) + '</div>' : '') +
        parts.map((p) => renderPart(p, S.pending.has(key(m.id)))).join('') +
        (!inThread && isTop(m) && !m.ephemeral ? replyLinkHtml(m) : '') +
      '</div>';
    return el;
  }

  function upsert(list, m, inThread) {
    const el = messageEl(m, inThread);
    const old = list.querySelector('.message[data-message-id="' + CSS.escape(key(m.id)) + '"]');
    if (old) {
      const focused = old.contains(document.activeElement); // a decided card loses the button that had focus
      old.replaceWith(el);
      if (focused) { el.tabIndex = -1; el.focus({ preventScroll: true }); }
      return;
    }
    const stick = nearBottom(list);
    const empty = list.querySelector(':scope > .empty'); // the list's placeholder, if any
    if (empty) empty.remove();
    const next = [...list.querySelectorAll('.message')].find((e) => {
      const o = S.msgs.get(e.dataset.messageId);
      return o && byId(o, m) > 0;
    });
    list.insertBefore(el, next || null);
    if (stick) toEnd(list);
  }

  function refreshReplies(tid) {
    const root = S.msgs.get(tid);
    if (!root) return;
    // Changed in place, not drawn again: a link replaced between the press and the release of a click
    // loses the click (the thread did not open when a reply arrived as it was clicked).
    const n = replyCount(root);
    document.querySelectorAll('#messages .message[data-message-id="' + CSS.escape(tid) + '"] .replies-link')
      .forEach((a) => {
        a.classList.toggle('no-replies', !n);
        a.dataset.replyCount = String(n);
        a.textContent = replyLinkText(n);
      });
    const div = $('thread-count');
    if (div && S.thread === tid) div.textContent = repliesText(n);
  }

  function renderSidebar() {
    for (const [listId, dm] of [['channel-list', false], ['dm-list', true]]) {
      const items = S.channels.filter((c) => (c.kind === 'dm') === dm), list = $(listId);
      // The links are drawn once and then only marked: one drawn again between the press and the release
      // of a click loses the click (an unread mark arriving as a channel was clicked).
      const drawn = JSON.stringify(items.map((c) => [c.id, c.name]));
      if (list.dataset.drawn !== drawn) {
        list.innerHTML = items.map((c) => '<li><a class="channel-link" data-channel="' + esc(c.id) + '" href="#/c/' +
          esc(enc(c.id)) + '">' + esc(c.name) + '</a></li>').join('');
        list.dataset.drawn = drawn;
      }
      list.querySelectorAll('.channel-link').forEach((a) => {
        a.classList.toggle('active', a.dataset.channel === S.channel);
        a.classList.toggle('unread', S.unread.has(a.dataset.channel));
      });
      if (dm) list.parentElement.hidden = !items.length;
    }
  }

  function renderChannel() {
    const list = $('messages'), place = 'c:' + S.channel;
    const ms = [...S.msgs.values()].filter((m) => m.channel === S.channel && isTop(m) && inWindow(place, m)).sort(byId);
    list.replaceChildren(...ms.map((m) => messageEl(m, false)));
    if (!ms.length) {
      list.innerHTML = '<div class="empty">No messages yet. Say hi, or try <code>' + esc(example(S.channel)) + '</code>.</div>';
    } else drawMarker(list, place);
    toEnd(list);
  }

  // ---------- older messages, a page at a time ----------
  // The oldest message a place shows: the first of the newest page read, then of each older page loaded.
  // Messages the page holds from before it (a thread's root opened from a link, pages loaded before the
  // channel was left) are not drawn: the list stays one piece, without a hole.
  const inWindow = (place, m) => Number(m.id) >= ((S.windows.get(place) || {}).from || 0);
  function setWindow(place, ms, more) {
    const w = { from: more && ms.length ? Number(ms[0].id) : 0, more: !!(more && ms.length), loading: false, error: '' };
    S.windows.set(place, w);
    return w;
  }
  const placeOfList = (list) => (list === $('messages') ? 'c:' + S.channel : 't:' + S.thread);

  // At the top of a channel: "Loading older messages…", a button to load them (the list loads them by itself
  // when scrolled near it), or where the channel begins. In a thread, under its root, until all are there.
  function drawMarker(list, place) {
    const w = S.windows.get(place) || { more: false };
    const thread = list !== $('messages');
    let marker = list.querySelector(':scope > .history-marker');
    // "Show older messages" pressed from the keyboard is drawn again (loading, then the button or where the
    // channel begins): the focus went to the page, and the next Tab started again from its top. It stays with
    // the marker, and goes to its button when there is one again (or to the first reply, once a thread's goes).
    const focused = !!marker && marker.contains(document.activeElement);
    if (thread && !w.more) {
      if (marker) marker.remove();
      if (focused) focusOn(firstShown(list));
      return;
    }
    if (!marker) {
      marker = document.createElement('div');
      marker.className = 'history-marker';
      const at = thread ? $('thread-count') : null;
      list.insertBefore(marker, at ? at.nextSibling : list.firstChild);
    }
    const what = thread ? 'replies' : 'messages';
    marker.dataset.state = w.loading ? 'loading' : w.error ? 'error' : w.more ? 'more' : 'start';
    marker.innerHTML = w.loading ? '<span role="status">Loading older ' + what + '…</span>' :
      w.error ? '<span class="load-error">' + esc(w.error) + '</span> <button type="button" class="load-older">Try again</button>' :
      w.more ? '<button type="button" class="load-older">Show older ' + what + '</button>' :
      'This is the beginning of ' + esc(chanName(S.channel)) + '.';
    if (focused) focusOn(marker.querySelector('button') || marker);
  }

  function focusOn(el) {
    if (!el) return;
    if (el.tagName !== 'BUTTON') el.tabIndex = -1;
    el.focus({ preventScroll: true });
  }

  // The reader is near the top of what is loaded (or the list does not fill its pane): load the page before.
  function nearStart(list) {
    const marker = list.querySelector(':scope > .history-marker[data-state="more"]');
    return !!(marker && list.clientHeight) &&
      marker.getBoundingClientRect().bottom > list.getBoundingClientRect().top - 600;
  }

  async function loadOlder(list) {
    const place = placeOfList(list), w = S.windows.get(place);
    if (!w || !w.more || w.loading || !w.from) return;
    const thread = list !== $('messages'), seq = thread ? threadSeq : chanSeq;
    w.loading = true; w.error = '';
    keepInPlace(list, () => drawMarker(list, place));
    let d;
    try {
      d = await api((thread ? '/api/threads/' + enc(S.thread) : '/api/channels/' + enc(S.channel)) +
        '/messages?viewer=' + enc(S.user) + '&before=' + w.from);
    } catch (e) {
      w.error = e.message;
    }
    w.loading = false;
    // Another place (or user, or the same place read afresh) since: this answer is not for what is shown.
    if (S.windows.get(place) !== w || seq !== (thread ? threadSeq : chanSeq) || place !== placeOfList(list)) return;
    if (d) {
      const ms = (thread ? d.replies : d.messages) || [];
      if (d.root) merge(d.root);
      ms.forEach(merge);
      const before = w.from;
      w.more = !!(d.has_more && ms.length);
      w.from = w.more ? Number(ms[0].id) : 0;
      const older = [...S.msgs.values()].filter((m) => (thread ? !isTop(m) && key(m.thread_id) === S.thread :
        isTop(m) && m.channel === S.channel) && inWindow(place, m) && Number(m.id) < before).sort(byId);
      keepInPlace(list, () => {
        const first = firstShown(list);
        for (const el of older.map((m) => messageEl(m, thread))) list.insertBefore(el, first);
        drawMarker(list, place);
      });
      if (thread) refreshReplies(S.thread);
    } else keepInPlace(list, () => drawMarker(list, place));
    if (nearStart(list)) loadOlder(list); // a short page, or a tall pane: more until it is filled
  }

  // The oldest message drawn (a thread's first reply drawn), null for none.
  const firstShown = (list) => list.querySelector(list === $('messages') ? ':scope > .message' :
    ':scope > #thread-count ~ .message');

  // Older messages go above the ones shown, and the marker changes: what the reader sees stays where it is.
  function keepInPlace(list, change) {
    const anchor = firstShown(list), top = anchor ? anchor.getBoundingClientRect().top : 0;
    change();
    if (anchor && anchor.isConnected) list.scrollTop += anchor.getBoundingClientRect().top - top;
  }

  function renderThread() {
    const tid = S.thread, root = S.msgs.get(tid);
    if (!root) return;
    const replies = [...S.msgs.values()].filter((m) => !isTop(m) && key(m.thread_id) === tid &&
      inWindow('t:' + tid, m)).sort(byId);
    const div = document.createElement('div');
    div.className = 'thread-divider';
    div.id = 'thread-count';
    div.textContent = repliesText(replyCount(root));
    const rootEl = messageEl(root, true);
    rootEl.classList.add('thread-root');
    $('thread-messages').replaceChildren(rootEl, div, ...replies.map((m) => messageEl(m, true)));
    drawMarker($('thread-messages'), 't:' + tid);
    $('thread-channel').textContent = chanName(root.channel);
    toEnd($('thread-messages'));
  }

  // ---------- loading & routing ----------
  const isDm = (id) => S.channels.some((c) => c.id === id && c.kind === 'dm');
  const example = (id) => (isDm(id) ? '' : '@' + S.bot + ' ') + 'help';

  // In the DM every message reaches the bot (the README says so): "mention @baton" was wrong there.
  function renderHint(ch) {
    const code = '<button type="button" class="example" title="Put it in the message box"><code>' +
      esc(example(ch)) + '</code></button>';
    $('hint').innerHTML = isDm(ch) ? 'every message here reaches the bot, e.g. ' + code :
      'mention <code>@' + esc(S.bot) + '</code> to talk to the bot, e.g. ' + code;
  }

  async function loadChannel(quiet) {
    const seq = ++chanSeq, ch = S.channel, list = $('messages');
    const name = chanName(ch);
    $('channel-title').textContent = name;
    renderHint(ch);
    $('composer').placeholder = $('composer-label').textContent = 'Message ' + name;
    document.title = name + " · Baton's playground";
    S.unread.delete(ch);
    renderSidebar();
    if (!quiet) list.innerHTML = '<div class="empty">Loading…</div>';
    try {
      const d = await api('/api/channels/' + enc(ch) + '/messages?viewer=' + enc(S.user));
      // An answer overtaken by a newer load is dropped: it may be another user's (their private messages).
      if (seq !== chanSeq) return;
      (d.messages || []).forEach(merge);
      setWindow('c:' + ch, d.messages || [], d.has_more);
      renoteNewest(ch, []);
      renderChannel();
      if (nearStart(list)) loadOlder(list);
    } catch (e) {
      if (seq === chanSeq) list.innerHTML = '<div class="empty load-error">' + esc(e.message) + '</div>';
    }
  }

  async function loadThread(quiet) {
    const seq = ++threadSeq, tid = S.thread;
    noteEnd($('messages'));
    $('thread-pane').hidden = false;
    document.body.classList.add('thread-open');
    autosize($('thread-composer'));  // its draft, if any, was put in while the pane was hidden
    markSelected();
    if (S.msgs.has(tid)) renderThread();
    else if (!quiet) $('thread-messages').innerHTML = '<div class="empty">Loading…</div>';
    try {
      const d = await api('/api/threads/' + enc(tid) + '/messages?viewer=' + enc(S.user));
      if (seq !== threadSeq) return;
      if (d.root) merge(d.root);
      (d.replies || []).forEach(merge);
      setWindow('t:' + tid, d.replies || [], d.has_more);
      renderThread(); refreshReplies(tid);
      if (nearStart($('thread-messages'))) loadOlder($('thread-messages'));
    } catch (e) {
      if (seq === threadSeq) $('thread-messages').innerHTML = '<div class="empty load-error">' + esc(e.message) + '</div>';
    }
  }

  function closeThread() {
    ++threadSeq;
    const closing = !$('thread-pane').hidden && $('thread-pane').contains(document.activeElement);
    $('thread-pane').hidden = true;
    document.body.classList.remove('thread-open');
    showErr($('thread-composer-error'), '');
    markSelected();
    if (closing) $('composer').focus(); // focus is not left on nothing (the page) when the pane goes
  }

  function markSelected() {
    document.querySelectorAll('#messages .message')
      .forEach((e) => e.classList.toggle('selected', e.dataset.messageId === S.thread));
  }

  function route() {
    const m = location.hash.match(/^#\/c\/([^/]+)(?:\/t\/([^/]+))?\/?$/);
    if (!m) {
      if (S.channels.length) { history.replaceState(null, '', '#/c/' + enc(S.channels[0].id)); route(); }
      return;
    }
    const ch = dec(m[1]), tid = m[2] ? dec(m[2]).replace(/^0+(?=\d)/, '') : null; // "03" is thread 3
    if (m[2] && tid !== dec(m[2])) { history.replaceState(null, '', '#/c/' + enc(ch) + '/t/' + enc(tid)); }
    if (ch !== S.channel) {
      swapDraft($('composer'), S.channel && 'c:' + S.channel, 'c:' + ch); // a draft stays where it was typed
      S.channel = ch; loadChannel(); if (!tid) $('composer').focus();
    }
    $('thread-close').href = '#/c/' + enc(ch);
    if (tid !== S.thread) {
      swapDraft($('thread-composer'), S.thread && 't:' + S.thread, tid && 't:' + tid);
      S.thread = tid;
      if (tid) { loadThread(); $('thread-composer').focus(); } else closeThread();
    }
  }

  // ``from`` is null at the first route: what is in the box then was typed while the page was loading,
  // and belongs where it opens (it was wiped).
  function swapDraft(box, from, to) {
    // Its error was about the text that stays behind as the draft (a message too long for #random stayed under
    // the box in #general, and in a channel that does not exist)
    if (from !== to) showErr($(box.id + '-error'), '');
    if (from) { if (box.value) S.drafts.set(from, box.value); else S.drafts.delete(from); }
    else if (box.value) return;
    box.value = (to && S.drafts.get(to)) || '';
    autosize(box);
  }

  function reloadAll(quiet) {
    if (S.channel) loadChannel(quiet);
    if (S.thread) loadThread(quiet);
  }

  // ---------- live updates ----------
  function ingest(m, own) {
    if (!fresh(m)) return;
    m = S.msgs.get(key(m.id));
    settleClicks(m);
    if (isTop(m)) {
      // A channel the page has not read yet (its first read still on the way) cannot tell a message from
      // before the page opened, which the stream repeats (it begins with the last few seconds), from a new
      // one: that read notes what is there, this message included.
      const noted = S.newest.has(m.channel);
      const unseen = noted && Number(m.id) > S.newest.get(m.channel);
      if (noted) seenTop(m);
      if (m.channel === S.channel) { if (inWindow('c:' + m.channel, m)) upsert($('messages'), m, false); }
      else if (unseen && !own && m.user !== S.user) markUnread(m.channel);
      if (S.thread === key(m.id)) {
        const list = $('thread-messages'), old = list.querySelector('.thread-root');
        if (old) { const el = messageEl(m, true); el.classList.add('thread-root'); old.replaceWith(el); }
      }
    } else {
      const tid = key(m.thread_id);
      if (!S.liveReplies.has(tid)) S.liveReplies.set(tid, new Set());
      S.liveReplies.get(tid).add(Number(m.id));
      if (S.thread === tid && $('thread-count') && inWindow('t:' + tid, m)) upsert($('thread-messages'), m, true);
      refreshReplies(tid);
    }
  }

  function markUnread(channel) {
    if (!S.channels.some((c) => c.id === channel)) return;
    S.unread.add(channel);
    renderSidebar();
  }

  // A card's edit, or the bot's answer in its thread (a refused or late click changes no card), ends
  // the wait that keeps a clicked card's buttons off.
  function settleClicks(m) {
    if (!S.pending.size) return;
    if (S.pending.delete(key(m.id))) return;
    if (!m.is_bot) return;
    const thread = key(isTop(m) ? m.id : m.thread_id);
    for (const id of [...S.pending.keys()]) {
      const card = S.msgs.get(id);
      if (card && key(isTop(card) ? card.id : card.thread_id) === thread) releaseCard(id);
    }
  }

  function releaseCard(id) {
    if (!S.pending.delete(id)) return;
    const card = S.msgs.get(id);
    if (!card) return;
    if (document.querySelector('#messages .message[data-message-id="' + CSS.escape(id) + '"]')) upsert($('messages'), card, false);
    if (document.querySelector('#thread-messages .message[data-message-id="' + CSS.escape(id) + '"]')) {
      if (key(card.id) === S.thread) renderThread(); else upsert($('thread-messages'), card, true);
    }
  }

  // Back online: the open channel is reloaded; the others are looked at for messages posted meanwhile
  // (older than the live stream's look back, they never arrive as events).
  async function catchUp(mark) {
    const user = S.user;
    await Promise.all(S.channels.filter((c) => c.id !== S.channel).map(async (c) => {
      let d;
      try {
        d = await api('/api/channels/' + enc(c.id) + '/messages?viewer=' + enc(user)); // its newest page
      } catch (_) {
        if (!S.newest.has(c.id)) S.newest.set(c.id, 0); // unread: rather too often than never
        return;
      }
      const before = renoteNewest(c.id, d.messages || []) ? 0 : S.newest.get(c.id) || 0;
      const tops = (d.messages || []).filter(isTop);
      tops.forEach(seenTop);
      if (mark && user === S.user && tops.some((m) => Number(m.id) > before && m.user !== S.user)) markUnread(c.id);
    }));
  }

  // Back online, what the page shows is read afresh, not merged into what it knew: Baton may have come
  // back on another database (baton.db removed to start over), whose ids begin again at 1. Merged, the
  // old messages stayed on screen, and a new one whose id the page had seen was dropped as known.
  // (Until the answers come, the lists stay as they are: no "Loading…" flash on a short break.)
  function forget() {
    S.msgs.clear();
    S.windows.clear();
    S.liveReplies.clear();
    S.pending.clear();
  }

  // The dot alone said nothing to a screen reader and little to anyone: while Baton is away the page
  // says so in words (a status line), since what is sent or clicked meanwhile fails.
  function setStatus(ok) {
    const s = $('conn-status');
    s.className = 'conn-status ' + (ok ? 'online' : 'offline');
    s.title = ok ? 'Live' : 'Reconnecting…';
    // a live region kept in the page (one shown only when needed is not always read out); empty: not shown
    $('conn-banner').textContent = ok ? '' : 'Baton is not reachable: reconnecting… ' +
      'What you send or click until it is back does not reach it.';
    if (ok) backAgain();
  }

  // A composer's "Could not reach the server" is not true any more once Baton is back: its text, still in
  // the box, was not sent, and the error says how to send it (or goes, if the box was emptied meanwhile).
  function backAgain() {
    for (const [boxId, errId] of [['composer', 'composer-error'], ['thread-composer', 'thread-composer-error']]) {
      const err = $(errId);
      if (!err.dataset.unreachable) continue;
      showErr(err, $(boxId).value.trim() ? 'Baton is back: this message was not sent yet. Press Enter to send it.' : '');
    }
  }

  function connect() {
    if (S.es) S.es.close();
    const es = new EventSource('/api/events?viewer=' + enc(S.user));
    S.es = es;
    es.onopen = () => {
      setStatus(true);
      if (S.down) { S.down = false; forget(); reloadAll(true); catchUp(true); } // catch up on anything missed
    };
    es.onerror = () => {
      setStatus(false);
      S.down = true;
      // the browser retries by itself unless the stream was refused outright
      if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (S.es === es) connect(); }, 3000);
    };
    es.onmessage = (ev) => {
      let d;
      try { d = JSON.parse(ev.data); } catch (_) { return; }
      if (d && d.type === 'message' && d.message) ingest(d.message, false);
    };
  }

  // ---------- actions ----------
  async function send(box, errEl, threadId) {
    const text = box.value;
    if (!text.trim()) return;
    // Sent once the one in flight is stored, where it was typed: sent with the first one's thread, a reply typed
    // in another thread opened meanwhile went to the first ("cancel" to another run). Left for another place
    // since, it stays there as its draft, unsent.
    if (box.dataset.busy) { box.dataset.again = placeOf(box); return; }
    const root = threadId && S.msgs.get(threadId);
    const body = { channel: (root && root.channel) || S.channel, user: S.user, text };
    if (threadId) body.thread_id = threadId;
    body.event_id = attemptId(box, body, text);
    box.dataset.busy = '1';
    // The box is emptied at once, as a chat's is. Emptied once the post was stored, the text stayed in it
    // meanwhile: what was typed after it was sent with it a second time, and a channel left meanwhile kept it
    // as its draft, sent already. A post that fails puts it back where it was typed.
    const where = placeOf(box);
    box.value = ''; autosize(box);
    try {
      const d = await api('/api/messages', { method: 'POST', body });
      delete box.dataset.attempt;
      showErr(errEl, '');
      if (d.message) ingest(d.message, true);
      toEnd(threadId ? $('thread-messages') : $('messages'));
    } catch (e) {
      putBack(box, where, text);
      delete box.dataset.again; // what was typed after it stays too, after it, with the error
      showErr(errEl, e.message, e.unreachable);
    } finally {
      delete box.dataset.busy;
      // Back to the box from its Send button, not from wherever the person went while the post was on its
      // way (a thread opened meanwhile: its reply box lost the focus, and typing went to the channel).
      const at = document.activeElement;
      if (!at || at === document.body || box.form.contains(at)) box.focus();
      const again = box.dataset.again;
      delete box.dataset.again;
      if (again && again === placeOf(box)) send(box, errEl, box === $('composer') ? null : S.thread);
    }
  }

  // The draft a composer holds: the open channel's, or the open thread's (see swapDraft).
  const placeOf = (box) => (box === $('composer') ? 'c:' + S.channel : 't:' + S.thread);

  function putBack(box, where, text) {
    if (placeOf(box) === where) {
      box.value = text + (box.value.trim() ? '\n' + box.value : '');
      autosize(box);
    } else {
      const draft = S.drafts.get(where);
      S.drafts.set(where, text + (draft ? '\n' + draft : ''));
    }
  }

  // The same text sent again to the same place after a failure goes with the same event id: when the
  // first try was stored and only its answer was lost (Baton went down answering), it is not stored twice.
  function attemptId(box, body, text) {
    const what = JSON.stringify([body.channel, body.thread_id || null, body.user, text]);
    if (box.dataset.attempt && box.dataset.attemptFor === what) return box.dataset.attempt;
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    box.dataset.attempt = 'page-' + [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
    box.dataset.attemptFor = what;
    return box.dataset.attempt;
  }

  async function click(btn) {
    const part = btn.closest('.part-buttons'), msgEl = btn.closest('.message');
    const err = part.querySelector('.buttons-error'), btns = part.querySelectorAll('button');
    const id = msgEl.dataset.messageId, msg = S.msgs.get(id);
    btns.forEach((b) => { b.disabled = true; });
    showErr(err, '');
    const click = {};
    S.pending.set(id, click); // a card re-drawn meanwhile keeps its buttons off too
    try {
      await api('/api/clicks', {
        method: 'POST',
        body: { message_id: msg ? msg.id : Number(id), approval_id: btn.dataset.approvalId, action: btn.dataset.action, user: S.user },
      });
      // Accepted: the buttons stay off until the card's edit (or the bot's answer) arrives; a second fast
      // click (Reject right after Approve) got "already chose approve". Not forever, should none come.
      if (S.pending.get(id) === click) setTimeout(() => { if (S.pending.get(id) === click) releaseCard(id); }, 15000);
    } catch (e) {
      if (S.pending.get(id) === click) S.pending.delete(id);
      document.querySelectorAll('.message[data-message-id="' + CSS.escape(id) + '"] .part-buttons button')
        .forEach((b) => { b.disabled = false; });
      const shown = document.querySelector('.message[data-message-id="' + CSS.escape(id) + '"] .buttons-error');
      showErr(shown || err, e.message);
    } finally {
      // A disabled button loses focus: give it back (or to the card, while its buttons are off or gone)
      if (!document.activeElement || document.activeElement === document.body) {
        const card = btn.isConnected && !btn.disabled ? btn : document.querySelector(
          '.message[data-message-id="' + CSS.escape(id) + '"]');
        if (card) { if (card !== btn) card.tabIndex = -1; card.focus({ preventScroll: true }); }
      }
    }
  }

  function autosize(box) {
    box.style.height = 'auto';
    // A box not shown yet (the thread pane before it opens) has no height to measure: 0 squeezed it
    // to a sliver. It keeps the stylesheet's height until it is shown and sized again.
    if (!box.getClientRects().length) return;
    box.style.height = Math.min(box.scrollHeight, 200) + 'px';
  }

  // A key that ends an input method's composition (Japanese, Chinese) is no Enter to send nor Escape to close:
  // Safari gives it isComposing false and keyCode 229, so both are read.
  function composing(e) { return e.isComposing || e.keyCode === 229; }

  function wireComposer(formId, boxId, errId, threadOf) {
    const form = $(formId), box = $(boxId), err = $(errId);
    form.addEventListener('submit', (e) => { e.preventDefault(); send(box, err, threadOf()); });
    box.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !composing(e)) { e.preventDefault(); send(box, err, threadOf()); }
    });
    box.addEventListener('input', () => {
      autosize(box);
      if (!box.value.trim()) showErr(err, ''); // the text it was about is gone
    });
  }

  // ---------- boot ----------
  // Who this tab is, kept per tab (sessionStorage, which a reload keeps) and as the pick a new tab starts with
  // (localStorage). With localStorage alone, two tabs as two users (alice asks, bob approves) shared it: a
  // reloaded alice tab came back as bob, the last pick in any tab.
  function savedUser() {
    for (const store of ['sessionStorage', 'localStorage']) {
      try { const user = window[store].getItem(USER_KEY); if (user) return user; } catch (_) { /* unavailable */ }
    }
    return null;
  }
  function saveUser(user) {
    for (const store of ['sessionStorage', 'localStorage']) {
      try { window[store].setItem(USER_KEY, user); } catch (_) { /* unavailable */ }
    }
  }

  async function boot() {
    let d;
    try {
      d = await api('/api/channels');
    } catch (e) {
      $('messages').innerHTML = '<div class="empty load-error">' + esc(e.message) + ' Retrying…</div>';
      setTimeout(boot, 3000);
      return;
    }
    S.channels = d.channels || [];
    S.users = d.users || [];
    S.bot = d.bot || 'baton';
    const saved = savedUser();
    S.user = S.users.includes(saved) ? saved : (S.users[0] || '');
    $('user-picker').innerHTML = S.users.map((u) =>
      '<option value="' + esc(u) + '"' + (u === S.user ? ' selected' : '') + '>' + esc(u) + '</option>').join('');
    $('bot-name').textContent = '@' + S.bot;
    if (!S.channels.length) $('messages').innerHTML = '<div class="empty">No channels yet.</div>';
    renderSidebar();
    await catchUp(false); // what is there now is not unread; what comes after is
    connect();
    window.addEventListener('hashchange', route);
    route();
  }

  shown.observe($('messages'));
  shown.observe($('thread-messages'));
  for (const list of [$('messages'), $('thread-messages')]) {
    list.addEventListener('scroll', () => { if (nearStart(list)) loadOlder(list); }, { passive: true });
    list.addEventListener('load', (e) => { if (e.target.tagName === 'IMG') imageLoaded(list, e.target); }, true);
  }
  wireComposer('composer-form', 'composer', 'composer-error', () => null);
  wireComposer('thread-composer-form', 'thread-composer', 'thread-composer-error', () => S.thread);

  $('user-picker').addEventListener('change', (e) => {
    S.user = e.target.value;
    saveUser(S.user);
    S.msgs.clear();
    S.windows.clear();
    S.liveReplies.clear();
    S.pending.clear();
    S.unread.clear();
    connect();
    reloadAll(false);
  });

  document.addEventListener('click', (e) => {
    const btn = e.target.closest('.part-buttons button[data-action]');
    if (btn) { click(btn); return; }
    const older = e.target.closest('.history-marker .load-older');
    if (older) { loadOlder(older.closest('.message-list')); return; }
    const sample = e.target.closest('#hint .example');
    if (sample) {  // a button: a keyboard reaches it too (it was a bare <code>)
      const box = $('composer');
      box.value = sample.textContent;
      autosize(box);
      box.focus();
    }
  });

  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !composing(e) && S.thread && S.channel) location.hash = '#/c/' + enc(S.channel);
  });

  boot();
})();
