/*
 * app.js — all behaviour of the Baby Discord web page (no framework, no build).
 *
 * Owns: the nickname screen (guests, registered users and registration);
 * the session (connect, automatic re-connect, disconnect on /quit and on
 * page unload); the session is named by the HttpOnly bd_session cookie the
 * server sets, never by a token in a URL or in page storage; the one Server-Sent Events stream
 * of the session; the room list with unread and mention badges, the member
 * list with presence, the message pane (room messages with links, mentions,
 * actions, edits and deletions, system lines, DMs, command output, errors,
 * older history, the "new messages" line), DM conversations, room search,
 * the typing line, opt-in browser notifications, the tab title and the input
 * (plain messages and slash commands); the status label and error bar.
 *
 * Talks only to the same-origin HTTP API (docs/protocol.md).
 * Every piece of user or server text is inserted with textContent (links are
 * `a` elements built node by node), never as HTML.
 */
'use strict';

// ------------------------------------------------------------------ settings

const ROOMS_REFRESH_MS = 4000;
const MEMBERS_REFRESH_MS = 10000;
const HISTORY_PAGE = 50;
const UNREAD_SCAN_LIMIT = 100;   // history rows read to count a guest's unread messages
const MAX_BACKOFF_MS = 15000;
const NEAR_BOTTOM_PX = 120;
const STREAM_READY_TIMEOUT_MS = 5000;
const TYPING_SEND_MS = 2000;     // at most one "I am typing" per this long
const TYPING_SHOWN_MS = 5000;    // a typing line lasts this long after its last event
const READ_POST_DELAY_MS = 400;
const SEARCH_LIMIT = 25;
const STORE_NICK = 'babyDiscord.nickname';
const STORE_ROOM = 'babyDiscord.room';
const STORE_NOTIFY = 'babyDiscord.notify';
const BASE_TITLE = 'Baby Discord';

// ------------------------------------------------------------------ state

const state = {
  nickname: null,          // my nickname (as the server knows it)
  sessionId: null,         // set while the page has a session (the cookie names it)
  registered: false,       // logged in to an account: the session outlives reloads
  userId: null,
  currentRoom: null,       // the session's room (set by the stream's `connected`)
  targetRoom: null,        // room the session should be in; used when resuming
  dmWith: null,            // nickname of the DM conversation shown instead of the room, or null
  es: null,                // the open EventSource, or null
  streamRoom: null,        // room named in the open stream's URL
  seenIds: new Set(),      // ids of room messages in the pane (de-duplication)
  messages: new Map(),     // id -> { user, content, action } of the room messages in the pane
  maxIdByRoom: new Map(),  // lower-case room -> highest message id seen
  rooms: [],               // last room list from the server
  roomsLoaded: false,      // the first room list has arrived (baseline for guests' unread counts)
  unread: new Map(),       // lower-case room -> { unread, mentions, seen, lastMessageId, counted }
  readPosted: new Map(),   // lower-case room -> highest id sent to POST /read
  readPending: new Map(),  // lower-case room -> newest id waiting to be sent to POST /read
  readTimer: null,
  newLine: null,           // { room, seen } or { room, count, upTo }: where "New messages" goes
  dmConversations: [],     // from GET /api/dms (registered users)
  dmLocal: new Map(),      // lower-case nick -> { with, messages: [], unread, lastAt } from live DMs
  members: [],             // [{ nickname, status, message }] of the current room
  myStatus: { status: 'online', message: null },
  typers: new Map(),       // nickname -> time its typing line expires
  typingTimer: null,
  typingSendTimer: null,   // a typing signal waiting for the end of TYPING_SEND_MS
  lastTypingSent: 0,
  notify: false,           // the user turned browser notifications on
  hasOlder: true,          // history may have older messages
  loadingOlder: false,
  reconnecting: null,      // promise while a re-connect is under way
  failures: 0,             // consecutive connection failures (drives backoff)
  epoch: 0,                // bumped on logout; stale async work checks it
  timers: [],
  refreshTimer: null,
  errorKind: null,         // what the error bar is about: 'send', 'command', 'connection', …
  suspended: false,        // page went into the back/forward cache
};

// ------------------------------------------------------------------ small helpers

function $(id) {
  return document.getElementById(id);
}

/** Create an element; `text` is always inserted as text. */
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch (_) {
    return null;
  }
}

/** Lower-case room name without an IRC-style leading '#'. */
function roomKey(room) {
  return (room || '').replace(/^#/, '').toLowerCase();
}

function sameRoom(a, b) {
  return roomKey(a) === roomKey(b);
}

function isMe(nick) {
  return !!nick && !!state.nickname && String(nick).toLowerCase() === state.nickname.toLowerCase();
}

function saveSetting(key, value) {
  try {
    if (value === null || value === undefined) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch (_) { /* storage unavailable: nothing to remember */ }
}

function loadSetting(key) {
  try {
    return sessionStorage.getItem(key);
  } catch (_) {
    return null;
  }
}

/** Local HH:MM of an RFC 3339 timestamp (now when missing). */
function formatTime(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  if (Number.isNaN(date.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A stable colour per nickname. */
function nickColor(nick) {
  let hash = 0;
  for (const ch of String(nick).toLowerCase()) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360}, 65%, 70%)`;
}

/** Does `text` mention me as `@nick` (case-insensitive, a whole name)? */
function mentionsMe(text) {
  if (!state.nickname || !text) return false;
  const name = state.nickname.replace(/[^A-Za-z0-9_-]/g, '').replace(/-/g, '\\-');
  return new RegExp(`(^|[^A-Za-z0-9_-])@${name}(?![A-Za-z0-9_-])`, 'i').test(text);
}

/** Is the user looking at the current room right now? */
function viewingRoom() {
  return !!state.currentRoom && !state.dmWith && document.visibilityState !== 'hidden';
}

// ------------------------------------------------------------------ rich text (links and mentions), as DOM nodes

const URL_RE = /https?:\/\/[^\s<>"]+/gi;
const MENTION_RE = /(^|[^A-Za-z0-9_-])(@[A-Za-z0-9_-]{1,32})(?![A-Za-z0-9_-])/g;

/** Trailing punctuation that ends a sentence rather than a URL. */
function trimUrl(url) {
  let end = url.length;
  while (end > 0) {
    const ch = url[end - 1];
    if ('.,;:!?\'"'.includes(ch)) end--;
    else if (ch === ')' && !url.slice(0, end).includes('(')) end--;
    else if (ch === ']' && !url.slice(0, end).includes('[')) end--;
    else break;
  }
  return url.slice(0, end);
}

/** An `a` element for an http(s) URL, or null if it is not one. */
function linkElement(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch (_) {
    return null;
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return null;
  const a = el('a', 'link', url);
  a.href = parsed.href;
  a.target = '_blank';
  a.rel = 'noopener noreferrer';
  return a;
}

/** Appends `text` to `parent`, with `@nick` mentions in spans. */
function appendWithMentions(parent, text) {
  let last = 0;
  MENTION_RE.lastIndex = 0;
  for (let m = MENTION_RE.exec(text); m; m = MENTION_RE.exec(text)) {
    const start = m.index + m[1].length;
    if (start > last) parent.append(document.createTextNode(text.slice(last, start)));
    const mine = isMe(m[2].slice(1));
    parent.append(el('span', mine ? 'at me' : 'at', m[2]));
    last = start + m[2].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

/** Fills `parent` with `text`: links as `a` elements, mentions as spans, the rest as text nodes. */
function renderRichText(parent, text) {
  parent.replaceChildren();
  const value = String(text || '');
  let last = 0;
  URL_RE.lastIndex = 0;
  for (let m = URL_RE.exec(value); m; m = URL_RE.exec(value)) {
    const url = trimUrl(m[0]);
    const link = url && linkElement(url);
    if (!link) continue;
    if (m.index > last) appendWithMentions(parent, value.slice(last, m.index));
    parent.append(link);
    last = m.index + url.length;
    URL_RE.lastIndex = last;
  }
  if (last < value.length) appendWithMentions(parent, value.slice(last));
}

// ------------------------------------------------------------------ HTTP API

/**
 * One JSON request. Never throws; resolves to
 * { ok, status, json, error } where `error` is a sentence for the user.
 */
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (_) {
    return { ok: false, status: 0, json: null, error: 'Cannot reach the server. Check your connection.' };
  }
  const json = parseJson(await res.text().catch(() => ''));
  if (res.ok && json && json.success) return { ok: true, status: res.status, json, error: null };
  const error = (json && typeof json.error === 'string' && json.error)
    || `Request failed (HTTP ${res.status}).`;
  return { ok: false, status: res.status, json, error };
}

function isUnknownSession(result) {
  return result.status === 401 || (result.status === 404 && /session/i.test(result.error || ''));
}

/** A request for the session (the cookie names it); re-connects and retries once if the session is gone. */
async function sessionRequest(method, path, fields) {
  if (state.reconnecting) await state.reconnecting;
  const send = () => api(method, path, fields === undefined ? undefined : Object.assign({}, fields));
  let result = await send();
  if (!result.ok && isUnknownSession(result) && state.nickname) {
    if (await reconnect()) result = await send();
  }
  return result;
}

function sessionPost(path, fields) {
  return sessionRequest('POST', path, fields);
}

/** Best-effort disconnect that survives page unload (a registered user's session stays valid). */
function sendDisconnect() {
  const body = JSON.stringify({});
  let queued = false;
  try {
    queued = navigator.sendBeacon('/api/disconnect', new Blob([body], { type: 'application/json' }));
  } catch (_) {
    queued = false;
  }
  if (!queued) {
    fetch('/api/disconnect', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body,
      keepalive: true,
    }).catch(() => {});
  }
}

// ------------------------------------------------------------------ error bar and status

/**
 * Shows an error. `kind` says what it is about, so that it goes away by
 * itself once that thing succeeds (see clearError).
 */
function showError(text, kind) {
  $('error-text').textContent = text;
  $('error-bar').hidden = false;
  state.errorKind = kind || 'other';
}

function hideError() {
  $('error-bar').hidden = true;
  state.errorKind = null;
}

/** Hides the error bar if it is about one of `kinds`. */
function clearError(...kinds) {
  if (state.errorKind && kinds.includes(state.errorKind)) hideError();
}

/** kind: 'connected' | 'reconnecting' | 'offline' */
function setStatus(kind, detail) {
  const box = $('status');
  box.className = `status ${kind}`;
  $('status-text').textContent = kind === 'reconnecting' ? 'reconnecting…' : kind;
  box.title = detail || '';
}

// ------------------------------------------------------------------ login

function adoptSession(data, fallbackNickname, registered) {
  state.sessionId = true;
  state.userId = data.userId;
  state.nickname = data.nickname || fallbackNickname;
  state.registered = !!registered;
  saveSetting(STORE_NICK, state.registered ? null : state.nickname);
}

async function connect(nickname, password) {
  const body = password ? { nickname, password } : { nickname };
  const result = await api('POST', '/api/connect', body);
  if (result.ok) adoptSession(result.json.data || {}, nickname, !!password);
  return result;
}

/** The session the cookie names, if it is still valid (a registered user's survives a restart). */
async function resume() {
  const result = await api('GET', '/api/session');
  if (result.ok) {
    const data = result.json.data || {};
    adoptSession(data, data.nickname, data.registered);
  }
  return result;
}

async function onNickSubmit(event) {
  event.preventDefault();
  await submitLogin(false);
}

async function submitLogin(register) {
  const buttons = [$('nick-submit'), $('register-submit')];
  const nickname = $('nick-input').value.trim();
  const password = $('password-input').value;
  hideError();
  buttons.forEach((b) => { b.disabled = true; });
  let result;
  if (register) {
    result = await api('POST', '/api/register', { nickname, password });
    if (result.ok) adoptSession(result.json.data || {}, nickname, true);
  } else {
    result = await connect(nickname, password);
  }
  buttons.forEach((b) => { b.disabled = false; });
  $('password-input').value = '';
  if (!result.ok) {
    showError(result.error, 'login');
    $('nick-input').focus();
    return;
  }
  enterChat(null);
}

/** After a reload: the cookie's session, else the remembered guest nickname (and room). */
async function autoLogin() {
  if ((await resume()).ok) {
    const room = loadSetting(STORE_ROOM);
    enterChat(room && (await roomExists(room)) ? room : null);
    return;
  }
  const nickname = loadSetting(STORE_NICK);
  if (!nickname) return;
  $('nick-input').value = nickname;
  let result = null;
  for (let attempt = 0; attempt < 4; attempt++) {
    result = await connect(nickname);
    // The previous page's disconnect may still be in flight: retry a name clash briefly.
    if (result.ok || result.status !== 409) break;
    await sleep(400 * (attempt + 1));
  }
  if (!result.ok) {
    showError(result.error, 'login');
    return;
  }
  const room = loadSetting(STORE_ROOM);
  enterChat(room && (await roomExists(room)) ? room : null);
}

function enterChat(room) {
  resetChatView();
  $('login-screen').hidden = true;
  $('chat-screen').hidden = false;
  renderMe();
  state.failures = 0;
  clearError('login');
  setStatus('connected');
  startTimers();
  refreshRooms();
  refreshDms();
  renderNotifyButton();
  if (room) openStream(room);
  $('message-input').focus();
}

/** Ends the session (if any) and shows the nickname screen. */
async function logout(errorText) {
  const sessionId = state.sessionId;
  const nickname = state.nickname;
  const registered = state.registered;
  state.epoch++;
  stopTimers();
  closeStream();
  Object.assign(state, {
    sessionId: null, registered: false, userId: null, nickname: null, currentRoom: null, targetRoom: null,
    dmWith: null, rooms: [], roomsLoaded: false, dmConversations: [], failures: 0, newLine: null,
    myStatus: { status: 'online', message: null },
  });
  state.maxIdByRoom.clear();
  state.unread.clear();
  state.readPosted.clear();
  state.readPending.clear();
  state.dmLocal.clear();
  saveSetting(STORE_NICK, null);
  saveSetting(STORE_ROOM, null);
  // Logging out ends a registered user's lasting session too, and clears the cookie.
  if (sessionId || registered) await api('POST', '/api/logout', {});
  resetChatView();
  setStatus('offline');
  $('chat-screen').hidden = true;
  $('login-screen').hidden = false;
  $('nick-input').value = nickname || '';
  if (errorText) showError(errorText, 'login');
  $('nick-input').focus();
}

function renderMe() {
  $('me-nick').textContent = state.nickname || '';
  const { status, message } = state.myStatus;
  const away = status === 'away';
  $('me-panel').classList.toggle('away', away);
  $('me-status').textContent = away ? (message ? `away: ${message}` : 'away') : 'online';
}

// ------------------------------------------------------------------ timers

function startTimers() {
  stopTimers();
  state.timers.push(
    setInterval(() => refreshRooms(), ROOMS_REFRESH_MS),
    setInterval(() => refreshDms(), ROOMS_REFRESH_MS),
    setInterval(() => refreshMembers(), MEMBERS_REFRESH_MS),
  );
}

function stopTimers() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  clearTimeout(state.refreshTimer);
  clearTimeout(state.readTimer);
  state.readTimer = null;
  clearTimeout(state.typingTimer);
  clearTimeout(state.typingSendTimer);
  state.typingSendTimer = null;
}

/** Debounced refresh of members and rooms (system events can come in bursts). */
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    refreshMembers();
    refreshRooms();
  }, 300);
}

// ------------------------------------------------------------------ rooms, unread counts and badges

function unreadOf(room) {
  const key = roomKey(room);
  let info = state.unread.get(key);
  if (!info) {
    info = { unread: 0, mentions: 0, seen: null, lastMessageId: null, counted: null };
    state.unread.set(key, info);
  }
  return info;
}

async function refreshRooms() {
  const epoch = state.epoch;
  const result = await api('GET', '/api/rooms');
  if (!result.ok || epoch !== state.epoch || $('chat-screen').hidden) return;
  const rooms = (result.json.data && result.json.data.rooms) || [];
  state.rooms = rooms.filter((room) => room && typeof room.name === 'string');
  const firstLoad = !state.roomsLoaded;
  state.roomsLoaded = true;
  state.rooms.forEach((room) => updateUnreadFromList(room, firstLoad));
  renderRooms();
}

/**
 * Unread counts of a room the user is not looking at. A registered session
 * gets them from the server (read markers); otherwise the page counts the
 * messages after the last one it saw, reading the room's recent history
 * when `lastMessageId` moves.
 */
function updateUnreadFromList(room, firstLoad) {
  const info = unreadOf(room.name);
  const last = typeof room.lastMessageId === 'number' ? room.lastMessageId : null;
  info.lastMessageId = last;
  const current = sameRoom(room.name, state.currentRoom);
  if (current) {
    // The stream carries this room: it is counted live (handleMessage).
    if (info.seen === null) info.seen = last || 0;
    return;
  }
  info.fromServer = typeof room.unread === 'number';
  if (info.fromServer) {
    info.unread = room.unread;
    info.mentions = typeof room.mentions === 'number' ? room.mentions : 0;
    return;
  }
  // Counted by the page: nothing is new in a room that existed when the page
  // opened; a room that appears later is new from its first message.
  if (info.seen === null) info.seen = firstLoad ? (last || 0) : 0;
  if (last !== null && last > info.seen && info.counted !== last) countUnread(room.name, info.seen, last);
  if (last !== null && last <= info.seen) {
    info.unread = 0;
    info.mentions = 0;
  }
}

async function countUnread(room, after, upTo) {
  const info = unreadOf(room);
  info.counted = upTo;
  const epoch = state.epoch;
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/history?limit=${UNREAD_SCAN_LIMIT}`);
  if (!result.ok || epoch !== state.epoch) {
    info.counted = null;
    return;
  }
  if (sameRoom(room, state.currentRoom) || info.seen !== after) return; // viewed meanwhile
  const fresh = ((result.json.data && result.json.data.messages) || [])
    .filter((m) => Number(m.id) > after && !isMe(m.nickname));
  const mentions = fresh.filter((m) => mentionsMe(m.content));
  if (mentions.length > info.mentions) {
    const m = mentions[mentions.length - 1];
    notify(`${m.nickname} mentioned you in #${room}`, m.content, () => joinRoom(room));
  }
  info.unread = fresh.length;
  info.mentions = mentions.length;
  renderRooms();
}

async function roomExists(room) {
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/members`);
  return result.ok || result.status !== 404;
}

/** Updates #room-list in place (so a click is never lost to a re-render). */
function renderRooms() {
  const list = $('room-list');
  const existing = new Map([...list.children].map((li) => [li.dataset.room, li]));
  const rooms = state.rooms.slice().sort((a, b) => a.name.localeCompare(b.name));
  rooms.forEach((room, index) => {
    let li = existing.get(room.name);
    if (li) existing.delete(room.name);
    else li = createRoomItem(room.name);
    updateRoomItem(li, room);
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
  });
  existing.forEach((li) => li.remove());
  $('rooms-empty').hidden = rooms.length > 0;
  updateTitle();
}

function createRoomItem(name) {
  const li = el('li', 'room');
  li.dataset.room = name;
  const button = el('button', 'room-btn');
  button.type = 'button';
  const label = el('span', 'room-label');
  label.append(el('span', 'room-name', name), el('span', 'room-members'));
  button.append(label, el('span', 'badge mention'), el('span', 'badge unread'));
  li.append(button);
  return li;
}

function updateRoomItem(li, room) {
  const count = Number(room.memberCount) || 0;
  const current = sameRoom(room.name, state.currentRoom);
  const info = unreadOf(room.name);
  const unread = info.unread || 0;
  const mentions = info.mentions || 0;
  li.classList.toggle('active', current && !state.dmWith);
  li.classList.toggle('current', current);
  li.classList.toggle('has-unread', unread > 0);
  li.classList.toggle('has-mention', mentions > 0);
  li.querySelector('.room-members').textContent = `${count} member${count === 1 ? '' : 's'}`;
  const mentionBadge = li.querySelector('.badge.mention');
  mentionBadge.textContent = mentions ? `@${badgeText(mentions)}` : '';
  mentionBadge.hidden = !mentions;
  const unreadBadge = li.querySelector('.badge.unread');
  unreadBadge.textContent = unread ? badgeText(unread) : '';
  unreadBadge.hidden = !unread;
  const parts = [`${room.name}: ${count} member${count === 1 ? '' : 's'}`];
  if (unread) parts.push(`${unread} unread`);
  if (mentions) parts.push(`${mentions} mention${mentions === 1 ? '' : 's'}`);
  li.querySelector('.room-btn').title = parts.join(', ');
}

function badgeText(count) {
  return count > 99 ? '99+' : String(count);
}

/** Everything unread: rooms and DM conversations. */
function totalUnread() {
  let total = 0;
  state.unread.forEach((info, key) => {
    if (state.rooms.some((r) => roomKey(r.name) === key)) total += info.unread || 0;
  });
  dmUnreadCounts().forEach((n) => { total += n; });
  return total;
}

function updateTitle() {
  const total = totalUnread();
  if (total > 0) document.title = `(${total}) ${BASE_TITLE}`;
  else if (state.dmWith) document.title = `@${state.dmWith} · ${BASE_TITLE}`;
  else if (state.currentRoom) document.title = `#${state.currentRoom} · ${BASE_TITLE}`;
  else document.title = BASE_TITLE;
}

/**
 * The user is looking at the current room: nothing in it is unread any more;
 * a registered user's read marker moves to the newest message.
 */
function markCurrentRoomSeen() {
  if (!viewingRoom()) return;
  const room = state.currentRoom;
  const info = unreadOf(room);
  const newest = state.maxIdByRoom.get(roomKey(room)) || 0;
  const changed = info.unread || info.mentions;
  info.unread = 0;
  info.mentions = 0;
  if (newest > (info.seen || 0)) info.seen = newest;
  if (changed) renderRooms();
  else updateTitle();
  if (newest) postRead(room, newest);
}

/**
 * POST /api/rooms/:room/read for a registered user: forward only, the first
 * at once and then at most one per READ_POST_DELAY_MS (the newest id wins).
 */
function postRead(room, id) {
  if (!state.registered) return;
  const key = roomKey(room);
  if ((state.readPosted.get(key) || 0) >= id) return;
  if ((state.readPending.get(key) || 0) < id) state.readPending.set(key, id);
  if (!state.readTimer) flushRead(false);
}

/** Sends the pending read markers (with sendBeacon when the page is going away). */
function flushRead(unloading) {
  const pending = [...state.readPending];
  state.readPending.clear();
  pending.forEach(([key, id]) => {
    if ((state.readPosted.get(key) || 0) >= id) return;
    state.readPosted.set(key, id);
    const path = `/api/rooms/${encodeURIComponent(key)}/read`;
    if (unloading) {
      try {
        navigator.sendBeacon(path, new Blob([JSON.stringify({ id })], { type: 'application/json' }));
      } catch (_) { /* best effort */ }
      return;
    }
    api('POST', path, { id }).then((result) => {
      if (!result.ok && state.readPosted.get(key) === id) state.readPosted.delete(key);
    });
  });
  if (!unloading && pending.length) {
    clearTimeout(state.readTimer);
    state.readTimer = setTimeout(() => {
      state.readTimer = null;
      flushRead(false);
    }, READ_POST_DELAY_MS);
  }
}

function onRoomListClick(event) {
  const li = event.target.closest('li[data-room]');
  if (li) joinRoom(li.dataset.room);
}

async function joinRoom(room) {
  closeDrawers();
  if (state.reconnecting) await state.reconnecting;
  if (state.es && sameRoom(room, state.currentRoom)) {
    showRoomView();
    return;
  }
  prepareNewLine(room);
  flushRead(false); // the marker of the room being left goes first
  if (!state.es) {
    openStream(room);
    return;
  }
  const result = await sessionPost('/api/command', { command: `/join ${room}` });
  if (!result.ok) {
    state.newLine = null;
    showError(result.error, 'room');
    return;
  }
  clearError('room', 'command');
  afterRoomCommand(room);
}

/** Remembers where the "New messages" line goes in `room` when it opens. */
function prepareNewLine(room) {
  const info = unreadOf(room);
  if (!info.unread) {
    state.newLine = null;
    return;
  }
  // Counts from the server's read marker: the line goes above the last
  // `count` messages up to the newest one listed. Counted by the page: above
  // the first message after the last one seen.
  state.newLine = info.fromServer
    ? { room: roomKey(room), count: info.unread, upTo: info.lastMessageId }
    : { room: roomKey(room), seen: info.seen || 0 };
}

function roomNameProblem(name) {
  if (/\s/.test(name.trim())) {
    const suggestion = name.trim().split(/\s+/).join('-').replace(/^#/, '');
    return `Room names can't contain spaces — try ${suggestion}`;
  }
  return null;
}

async function onCreateRoom(event) {
  event.preventDefault();
  const input = $('new-room-input');
  const name = input.value.trim();
  if (!name) return;
  const problem = roomNameProblem(name);
  if (problem) {
    showError(problem, 'create');
    return;
  }
  const result = await sessionPost('/api/command', { command: `/create ${name}` });
  if (!result.ok) {
    showError(result.error, 'create');
    return;
  }
  input.value = '';
  clearError('create', 'command', 'room');
  closeDrawers();
  afterRoomCommand(name);
}

/** The session is now in `room`: make sure a stream carries it. */
function afterRoomCommand(room) {
  if (room) {
    state.targetRoom = roomKey(room);
    if (!state.es) openStream(roomKey(room));
  }
  showRoomView();
  refreshRooms();
}

// ------------------------------------------------------------------ members and presence

async function refreshMembers() {
  const room = state.currentRoom;
  if (!room) {
    renderMembers([]);
    return;
  }
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/members`);
  if (!result.ok || !sameRoom(room, state.currentRoom)) return;
  const members = (result.json.data && result.json.data.members) || [];
  renderMembers(members.map((m) => {
    if (typeof m === 'string') return { nickname: m, status: 'online', message: null };
    return {
      nickname: (m && (m.nickname || m.name)) || '',
      status: (m && m.status) || 'online',
      message: m && typeof m.message === 'string' ? m.message : null,
    };
  }));
}

function renderMembers(members) {
  state.members = members.filter((m) => m && m.nickname);
  const me = state.members.find((m) => isMe(m.nickname));
  if (me) {
    state.myStatus = { status: me.status, message: me.message };
    renderMe();
  }
  const items = state.members
    .slice()
    .sort((a, b) => a.nickname.toLowerCase().localeCompare(b.nickname.toLowerCase()))
    .map(createMemberItem);
  $('members').replaceChildren(...items);
  $('member-count').textContent = state.currentRoom ? `— ${items.length}` : '';
}

function createMemberItem(member) {
  const nick = member.nickname;
  const status = member.status === 'away' ? 'away' : 'online';
  const li = el('li', isMe(nick) ? 'member me' : 'member');
  li.dataset.nick = nick;
  li.dataset.status = status;
  li.style.setProperty('--nick-color', nickColor(nick));
  const avatar = el('span', 'avatar', nick.charAt(0).toUpperCase());
  avatar.append(el('span', `presence-dot ${status}`));
  avatar.setAttribute('aria-hidden', 'true');
  const text = el('span', 'member-text');
  text.append(el('span', 'member-name', nick));
  const statusText = status === 'away' ? (member.message ? `away: ${member.message}` : 'away') : '';
  if (statusText) text.append(el('span', 'member-status', statusText));
  li.title = statusText ? `${nick} — ${statusText}` : `${nick} — online`;
  li.append(avatar, text);
  return li;
}

function handlePresence(data) {
  if (typeof data.user !== 'string') return;
  const message = typeof data.message === 'string' ? data.message : null;
  if (isMe(data.user)) {
    state.myStatus = { status: data.status === 'away' ? 'away' : 'online', message };
    renderMe();
  }
  const member = state.members.find((m) => m.nickname.toLowerCase() === data.user.toLowerCase());
  if (!member) return;
  if (data.status === 'offline') {
    renderMembers(state.members.filter((m) => m !== member));
    return;
  }
  member.status = data.status;
  member.message = message;
  renderMembers(state.members);
}

// ------------------------------------------------------------------ typing

/** Is what the user is typing a message to the current room (not a command, not a DM)? */
function typingWanted() {
  const value = $('message-input').value;
  return !!value.trim() && !value.trimStart().startsWith('/') && !state.dmWith && !!state.currentRoom;
}

/**
 * Tells the server the user is typing in the current room: at most once per
 * TYPING_SEND_MS (the server drops more anyway); a keystroke inside that time
 * schedules one signal at its end, so a quick burst of typing still shows.
 */
function onMessageInput() {
  if (!typingWanted()) {
    clearTimeout(state.typingSendTimer);
    state.typingSendTimer = null;
    return;
  }
  const wait = state.lastTypingSent + TYPING_SEND_MS - Date.now();
  if (wait <= 0) {
    sendTyping();
  } else if (!state.typingSendTimer) {
    state.typingSendTimer = setTimeout(() => {
      state.typingSendTimer = null;
      if (typingWanted()) sendTyping();
    }, wait + 50);
  }
}

function sendTyping() {
  state.lastTypingSent = Date.now();
  api('POST', '/api/typing', {});
}

function handleTyping(data) {
  if (typeof data.user !== 'string' || isMe(data.user)) return;
  if (data.room && !sameRoom(data.room, state.currentRoom)) return;
  state.typers.set(data.user, Date.now() + TYPING_SHOWN_MS);
  renderTyping();
}

function stopTyping(user) {
  if (user && state.typers.delete(user)) renderTyping();
}

function renderTyping() {
  clearTimeout(state.typingTimer);
  const now = Date.now();
  state.typers.forEach((until, user) => {
    if (until <= now) state.typers.delete(user);
  });
  const names = [...state.typers.keys()];
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length === 3) text = `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  else if (names.length > 3) text = 'Several people are typing…';
  $('typing').textContent = state.dmWith ? '' : text;
  if (names.length) {
    const next = Math.min(...state.typers.values()) - now;
    state.typingTimer = setTimeout(renderTyping, Math.max(next, 50));
  }
}

// ------------------------------------------------------------------ the SSE stream

/** Opens the session's stream on `room`; resolves true on its first `connected`, false on error. */
function openStream(room) {
  closeStream();
  const params = new URLSearchParams();
  // Only ask for a replay when the pane already shows this room.
  const last = state.maxIdByRoom.get(roomKey(room));
  if (last && sameRoom(room, state.currentRoom)) params.set('lastEventId', String(last));
  const query = params.toString();
  const source = new EventSource(`/api/messages/${encodeURIComponent(room)}${query ? `?${query}` : ''}`);
  state.es = source;
  state.streamRoom = room;
  state.targetRoom = room;
  source.onopen = () => {
    if (source === state.es) setStatus('connected');
  };
  source.onerror = () => onStreamError(source);
  const handlers = {
    connected: handleConnected,
    message: handleMessage,
    system: handleSystem,
    dm: handleDm,
    presence: handlePresence,
    typing: handleTyping,
    edit: handleEdit,
    delete: handleDelete,
  };
  Object.entries(handlers).forEach(([name, handler]) => {
    source.addEventListener(name, (e) => onStreamEvent(source, e, handler));
  });
  return new Promise((resolve) => {
    source.addEventListener('connected', () => resolve(true), { once: true });
    source.addEventListener('error', () => resolve(false), { once: true });
  });
}

function closeStream() {
  if (state.es) state.es.close();
  state.es = null;
  state.streamRoom = null;
}

function onStreamEvent(source, event, handler) {
  if (source !== state.es) return; // an old stream
  const data = parseJson(event.data);
  if (data && typeof data === 'object') handler(data);
}

function onStreamError(source) {
  if (source !== state.es) return;
  if (source.readyState === EventSource.CLOSED) {
    // The server refused the stream (e.g. restarted and forgot the session).
    reconnect();
    return;
  }
  // EventSource is retrying by itself (it sends Last-Event-ID).
  setStatus('reconnecting');
  // After a /join the URL names the old room; retry with the right one instead.
  if (state.currentRoom && !sameRoom(state.streamRoom, state.currentRoom)) openStream(state.currentRoom);
}

function handleConnected(data) {
  const room = data.room ? String(data.room) : null;
  state.failures = 0;
  setStatus('connected');
  // Whatever failed while the connection was down works again.
  clearError('send', 'connection');
  state.targetRoom = room;
  switchRoom(room);
  refreshMembers();
  refreshRooms();
  markCurrentRoomSeen();
}

function handleMessage(data) {
  if (data.id === undefined || data.id === null) return;
  if (data.room && !sameRoom(data.room, state.currentRoom)) return; // from a room we left
  const id = Number(data.id);
  const key = roomKey(data.room || state.currentRoom);
  const fresh = !state.seenIds.has(id);
  if (id > (state.maxIdByRoom.get(key) || 0)) state.maxIdByRoom.set(key, id);
  const known = state.messages.get(id);
  if (!fresh && known && data.editedAt && data.editedAt !== known.editedAt) {
    // A replay after a reconnect carries the current text of an edited message.
    handleEdit({ id, room: data.room, content: data.content, editedAt: data.editedAt });
    return;
  }
  addRoomMessage({
    id, user: data.user, content: data.content, timestamp: data.timestamp,
    action: data.action === true, editedAt: data.editedAt || null,
  });
  stopTyping(data.user);
  if (!fresh) return;
  const info = unreadOf(key);
  if (viewingRoom()) {
    markCurrentRoomSeen();
  } else if (!isMe(data.user) && id > (info.seen || 0)) {
    // Counted live: the room is the session's, but the user is elsewhere (a DM, another tab).
    if (!info.unread && !(state.newLine && state.newLine.room === key)) {
      state.newLine = { room: key, seen: info.seen || 0 };
    }
    info.unread++;
    if (mentionsMe(data.content)) {
      info.mentions++;
      notify(`${data.user} mentioned you in #${state.currentRoom}`, data.content, () => showRoomView());
    }
    renderRooms();
  }
  if (isMe(data.user) && id > (info.seen || 0) && viewingRoom()) info.seen = id;
}

function handleSystem(data) {
  if (data.room && !sameRoom(data.room, state.currentRoom)) {
    scheduleRefresh();
    return;
  }
  addSystemLine(data.content, data.timestamp);
  scheduleRefresh();
}

function handleEdit(data) {
  const id = Number(data.id);
  const known = state.messages.get(id);
  if (!known) return;
  known.content = String(data.content || '');
  known.editedAt = data.editedAt || new Date().toISOString();
  const node = messageNode(id);
  if (node && !node.classList.contains('editing')) renderMessageBody(node, known);
}

function handleDelete(data) {
  const id = Number(data.id);
  const node = messageNode(id);
  state.messages.delete(id);
  if (!node) return;
  // The text is gone for good: the row keeps its place and says so.
  node.classList.remove('editing', 'mine', 'mention');
  node.classList.add('deleted');
  node.replaceChildren(
    node.querySelector('.time') || timeElement(null),
    el('span', 'content deleted-text', 'message deleted'),
  );
  updateEmptyState();
}

function messageNode(id) {
  return $('messages').querySelector(`.msg[data-id="${Number(id)}"]`);
}

// ------------------------------------------------------------------ direct messages

/** Live DM counts by conversation, plus the server's unread (DMs that arrived while offline). */
function dmUnreadCounts() {
  const counts = new Map();
  state.dmConversations.forEach((c) => {
    if (c && typeof c.with === 'string') counts.set(c.with.toLowerCase(), Number(c.unread) || 0);
  });
  state.dmLocal.forEach((c, key) => counts.set(key, (counts.get(key) || 0) + (c.unread || 0)));
  if (state.dmWith) counts.set(state.dmWith.toLowerCase(), 0);
  return counts;
}

function localConversation(nick) {
  const key = nick.toLowerCase();
  let conv = state.dmLocal.get(key);
  if (!conv) {
    conv = { with: nick, messages: [], unread: 0, lastAt: null };
    state.dmLocal.set(key, conv);
  }
  return conv;
}

function handleDm(data) {
  const from = String(data.from || '');
  const to = String(data.to || '');
  const other = isMe(from) ? to : from;
  if (!other) return;
  const conv = localConversation(other);
  const dm = { from, to, content: String(data.content || ''), createdAt: data.timestamp || new Date().toISOString() };
  conv.messages.push(dm);
  conv.lastAt = dm.createdAt;
  const open = state.dmWith && state.dmWith.toLowerCase() === other.toLowerCase();
  if (open) {
    appendDmRow(dm, true);
  } else {
    // In the room view a DM also shows as a line in the pane.
    appendDm(from, to, dm.content, dm.createdAt);
    if (!isMe(from)) conv.unread++;
  }
  if (!isMe(from) && (!open || document.visibilityState === 'hidden')) {
    notify(`Direct message from ${from}`, dm.content, () => openConversation(from));
  }
  renderDms();
  if (state.registered) refreshDms();
}

function appendDm(from, to, content, timestamp) {
  const text = isMe(from) ? `[DM to ${to}] ${content}` : `[DM from ${from}] ${content}`;
  const node = el('div', 'line dm');
  const body = el('span', 'content');
  renderRichText(body, text);
  node.append(timeElement(timestamp), body);
  appendLine(node, true);
}

async function refreshDms() {
  const epoch = state.epoch;
  if (!state.registered) {
    state.dmConversations = [];
    renderDms();
    return;
  }
  const result = await api('GET', '/api/dms');
  if (!result.ok || epoch !== state.epoch) return;
  state.dmConversations = ((result.json.data && result.json.data.conversations) || [])
    .filter((c) => c && typeof c.with === 'string');
  renderDms();
}

/** The sidebar's conversations: the server's (registered users) and this page's live ones, newest first. */
function renderDms() {
  const byKey = new Map();
  state.dmConversations.forEach((c) => byKey.set(c.with.toLowerCase(), { with: c.with, lastAt: c.lastAt || null }));
  state.dmLocal.forEach((c, key) => {
    const known = byKey.get(key);
    if (!known) byKey.set(key, { with: c.with, lastAt: c.lastAt });
    else if (c.lastAt && (!known.lastAt || c.lastAt > known.lastAt)) known.lastAt = c.lastAt;
  });
  const counts = dmUnreadCounts();
  const list = $('dm-list');
  // Updated in place (like the room list), so that a click is never lost to a re-render.
  const existing = new Map([...list.children].map((li) => [li.dataset.with.toLowerCase(), li]));
  const items = [...byKey.values()]
    .sort((a, b) => String(b.lastAt || '').localeCompare(String(a.lastAt || '')))
    .map((c) => {
      const key = c.with.toLowerCase();
      const unread = counts.get(key) || 0;
      let li = existing.get(key);
      if (li) {
        existing.delete(key);
      } else {
        li = el('li', 'room dm-conversation');
        const button = el('button', 'room-btn');
        button.type = 'button';
        const label = el('span', 'room-label');
        label.append(el('span', 'room-name'));
        button.append(label, el('span', 'badge unread'));
        li.append(button);
      }
      li.dataset.with = c.with;
      li.querySelector('.room-name').textContent = c.with;
      li.classList.toggle('unread', unread > 0);
      li.classList.toggle('has-unread', unread > 0);
      li.classList.toggle('active', !!state.dmWith && state.dmWith.toLowerCase() === key);
      const badge = li.querySelector('.badge');
      badge.textContent = unread ? badgeText(unread) : '';
      badge.hidden = !unread;
      li.querySelector('.room-btn').title = unread ? `${c.with}: ${unread} unread` : `Direct messages with ${c.with}`;
      return li;
    });
  existing.forEach((li) => li.remove());
  items.forEach((li, index) => {
    if (list.children[index] !== li) list.insertBefore(li, list.children[index] || null);
  });
  const any = items.length > 0;
  list.hidden = !any;
  $('dm-title').hidden = !any;
  updateTitle();
}

/** Shows a conversation in place of the room (the session stays in its room). */
async function openConversation(nick) {
  const key = nick.toLowerCase();
  state.dmWith = nick;
  closeDrawers();
  closeSearch();
  const conv = localConversation(nick);
  conv.unread = 0;
  renderConversationView();
  let messages = conv.messages.slice();
  if (state.registered) {
    const result = await api('GET', `/api/dms/${encodeURIComponent(nick)}/history?limit=${HISTORY_PAGE}`);
    if (!state.dmWith || state.dmWith.toLowerCase() !== key) return;
    if (result.ok) {
      const data = result.json.data || {};
      if (data.with) state.dmWith = data.with;
      messages = data.messages || [];
      // What the history returns counts as read on the server.
      state.dmConversations.forEach((c) => {
        if (c.with.toLowerCase() === key) c.unread = 0;
      });
    } else if (result.status !== 403) {
      showError(result.error, 'dm');
    }
  }
  $('dm-messages').replaceChildren();
  messages.forEach((m) => appendDmRow(m, false));
  renderConversationView();
  scrollToBottom();
  renderDms();
  refreshDms();
  $('message-input').focus();
}

function appendDmRow(m, scroll) {
  const from = m.from || m.nickname || '';
  const node = el('div', isMe(from) ? 'msg dm-msg mine' : 'msg dm-msg');
  const nick = el('span', 'nick', from);
  nick.style.setProperty('--nick-color', nickColor(from));
  const body = el('span', 'content');
  renderRichText(body, m.content);
  node.append(timeElement(m.createdAt || m.timestamp), nick, body);
  const stick = scroll && isNearBottom();
  $('dm-messages').append(node);
  $('dm-empty').hidden = true;
  if (stick || (scroll && isMe(from))) scrollToBottom();
}

function renderConversationView() {
  const nick = state.dmWith;
  $('chat-screen').classList.add('dm-view');
  $('messages').hidden = true;
  $('dm-messages').hidden = false;
  $('dm-empty').hidden = $('dm-messages').children.length > 0;
  $('dm-empty-name').textContent = nick;
  renderRoomHeader();
  renderRooms();
  renderTyping();
}

/** Back from a conversation (or another tab) to the session's room. */
function showRoomView() {
  const wasDm = !!state.dmWith;
  state.dmWith = null;
  $('chat-screen').classList.remove('dm-view');
  $('messages').hidden = false;
  $('dm-messages').hidden = true;
  $('dm-empty').hidden = true;
  const info = state.currentRoom ? unreadOf(state.currentRoom) : null;
  if (info && info.unread && !(state.newLine && sameRoom(state.newLine.room, state.currentRoom))) {
    state.newLine = { room: roomKey(state.currentRoom), seen: info.seen || 0 };
  }
  placeNewLine();
  renderRoomHeader();
  renderDms();
  renderTyping();
  if (wasDm) scrollToBottom();
  markCurrentRoomSeen();
  renderRooms();
}

function onDmListClick(event) {
  const li = event.target.closest('li[data-with]');
  if (li) openConversation(li.dataset.with);
}

// ------------------------------------------------------------------ notifications (opt-in)

function notificationsSupported() {
  return typeof window.Notification === 'function';
}

function renderNotifyButton() {
  const button = $('notify-btn');
  if (!notificationsSupported()) {
    button.hidden = true;
    return;
  }
  button.hidden = false;
  const permission = Notification.permission;
  state.notify = permission === 'granted' && loadSetting(STORE_NOTIFY) === 'on';
  button.disabled = permission === 'denied';
  button.classList.toggle('on', state.notify);
  button.textContent = permission === 'denied' ? 'Notifications blocked'
    : state.notify ? 'Notifications on' : 'Enable notifications';
  button.title = permission === 'denied'
    ? 'The browser blocks notifications for this site'
    : state.notify ? 'Click to turn mention and DM notifications off'
      : 'Get a notification for mentions and direct messages';
}

/** Only ever asks for permission when the user presses the button. */
async function onNotifyClick() {
  if (!notificationsSupported()) return;
  if (state.notify) {
    saveSetting(STORE_NOTIFY, 'off');
    renderNotifyButton();
    return;
  }
  let permission = Notification.permission;
  if (permission === 'default') {
    try {
      permission = await Notification.requestPermission();
    } catch (_) {
      permission = Notification.permission;
    }
  }
  saveSetting(STORE_NOTIFY, permission === 'granted' ? 'on' : 'off');
  renderNotifyButton();
}

/** A browser notification for a mention or DM, when the user opted in and is not looking. */
function notify(title, body, onClick) {
  if (!state.notify || !notificationsSupported() || Notification.permission !== 'granted') return;
  try {
    const n = new Notification(title, { body: String(body || '').slice(0, 200), tag: title });
    n.onclick = () => {
      window.focus();
      if (onClick) onClick();
      n.close();
    };
  } catch (_) { /* some browsers only notify from a service worker */ }
}

// ------------------------------------------------------------------ re-connect

/** Gets a new session for the same nickname; resolves true when there is one. */
function reconnect() {
  if (!state.nickname) return Promise.resolve(false);
  if (!state.reconnecting) {
    const attempt = reconnectLoop(state.epoch);
    state.reconnecting = attempt;
    attempt.finally(() => {
      if (state.reconnecting === attempt) state.reconnecting = null;
    });
  }
  return state.reconnecting;
}

function backoffDelay() {
  return state.failures === 0 ? 0 : Math.min(1000 * 2 ** (state.failures - 1), MAX_BACKOFF_MS);
}

async function reconnectLoop(epoch) {
  setStatus('reconnecting');
  closeStream();
  const oldSession = state.sessionId;
  state.sessionId = null;
  // Free the nickname in case the old session still exists on the server
  // (a registered user's lasting session stays valid and is resumed below).
  if (oldSession) await api('POST', '/api/disconnect', {});
  for (;;) {
    const wait = backoffDelay();
    state.failures++;
    if (wait) await sleep(wait);
    if (epoch !== state.epoch) return false;
    const result = state.registered
      ? await api('GET', '/api/session')
      : await api('POST', '/api/connect', { nickname: state.nickname });
    if (epoch !== state.epoch) {
      if (result.ok) api('POST', '/api/disconnect', {});
      return false;
    }
    if (result.ok) {
      const data = result.json.data || {};
      adoptSession(data, state.nickname, state.registered);
      renderMe();
      clearError('connection', 'send');
      await resumeRoom(epoch);
      return true;
    }
    if (result.status === 400 || result.status === 401) {
      logout(result.error); // the nickname (or the login) can never work again
      return false;
    }
    setStatus('reconnecting', result.error);
  }
}

/** Re-opens the stream on the room we were in, asking for what we missed. */
async function resumeRoom(epoch) {
  const room = state.targetRoom;
  if (room && !(await roomExists(room))) {
    if (epoch !== state.epoch) return;
    showError(`Room '${room}' is not available any more.`, 'room');
    state.targetRoom = null;
    switchRoom(null);
  }
  if (epoch !== state.epoch) return;
  if (state.targetRoom) {
    // Wait until the server has the session in the room again, so that a
    // retried POST (see sessionPost) is not refused with "not in a room".
    // `connected` also resets the backoff.
    await Promise.race([openStream(state.targetRoom), sleep(STREAM_READY_TIMEOUT_MS)]);
  } else {
    state.failures = 0;
    setStatus('connected');
  }
}

// ------------------------------------------------------------------ message pane

function scroller() {
  return $('message-scroller');
}

function isNearBottom() {
  const box = scroller();
  return box.scrollHeight - box.scrollTop - box.clientHeight < NEAR_BOTTOM_PX;
}

function scrollToBottom() {
  const box = scroller();
  box.scrollTop = box.scrollHeight;
}

function timeElement(timestamp) {
  const node = el('time', 'time', formatTime(timestamp));
  const date = timestamp ? new Date(timestamp) : null;
  if (date && !Number.isNaN(date.getTime())) {
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString();
  }
  return node;
}

/** Appends a non-room line (system, dm, info, error) to the room pane. */
function appendLine(node, force) {
  const stick = force || isNearBottom();
  $('messages').append(node);
  if (stick) scrollToBottom();
}

/** Inserts a room message in id order, once. */
function addRoomMessage(message, options) {
  const id = Number(message.id);
  if (!Number.isFinite(id) || state.seenIds.has(id)) return;
  state.seenIds.add(id);
  const known = {
    user: String(message.user || ''),
    content: String(message.content || ''),
    action: !!message.action,
    editedAt: message.editedAt || null,
  };
  state.messages.set(id, known);
  const mine = isMe(known.user);
  const node = el('div', 'msg');
  node.dataset.id = String(id);
  node.append(timeElement(message.timestamp));
  renderMessageBody(node, known);
  const stick = !(options && options.noScroll) && (mine || isNearBottom());
  insertById(node, id);
  placeNewLine();
  updateEmptyState();
  if (stick) scrollToBottom();
}

/**
 * (Re)builds a room message row after its time: nick and text (an action as
 * `* alice waves`), "(edited)", and Edit/Delete buttons on one's own messages.
 */
function renderMessageBody(node, message) {
  const time = node.querySelector('.time');
  const mine = isMe(message.user);
  node.className = 'msg';
  node.classList.toggle('mine', mine);
  node.classList.toggle('action', message.action);
  node.classList.toggle('mention', !mine && mentionsMe(message.content));
  node.classList.toggle('edited', !!message.editedAt);
  const parts = [time];
  const body = el('span', 'content');
  if (message.action) {
    const who = el('span', 'action-nick', message.user);
    who.style.setProperty('--nick-color', nickColor(message.user));
    body.append('* ', who, ' ');
    const rest = el('span', 'action-text');
    renderRichText(rest, message.content);
    body.append(rest);
  } else {
    const nick = el('span', 'nick', message.user);
    nick.style.setProperty('--nick-color', nickColor(message.user));
    parts.push(nick);
    renderRichText(body, message.content);
  }
  if (message.editedAt) {
    const mark = el('span', 'edited-mark', '(edited)');
    const date = new Date(message.editedAt);
    if (!Number.isNaN(date.getTime())) mark.title = `edited ${date.toLocaleString()}`;
    body.append(' ', mark);
  }
  parts.push(body);
  if (mine) {
    const actions = el('span', 'msg-actions');
    const edit = el('button', 'msg-edit', 'Edit');
    edit.type = 'button';
    edit.setAttribute('aria-label', 'Edit this message');
    const del = el('button', 'msg-delete', 'Delete');
    del.type = 'button';
    del.setAttribute('aria-label', 'Delete this message');
    actions.append(edit, del);
    parts.push(actions);
  }
  node.replaceChildren(...parts);
}

/** Places `node` before the first room message with a larger id (usually: at the end). */
function insertById(node, id) {
  const list = $('messages');
  let before = null;
  for (let child = list.lastElementChild; child; child = child.previousElementSibling) {
    if (child.dataset.id === undefined) continue;
    if (Number(child.dataset.id) < id) break;
    before = child;
  }
  list.insertBefore(node, before);
}

/** Puts the "New messages" line above the first message the user has not seen. */
function placeNewLine() {
  const line = $('new-line');
  const spec = state.newLine;
  if (!spec || !sameRoom(spec.room, state.currentRoom)) {
    if (line) line.remove();
    return;
  }
  const rows = [...$('messages').querySelectorAll('.msg[data-id]')];
  let first = null;
  if (typeof spec.count === 'number') {
    const upTo = typeof spec.upTo === 'number' ? spec.upTo : Infinity;
    const candidates = rows.filter((r) => Number(r.dataset.id) <= upTo);
    if (candidates.length < spec.count && spec.count <= 200 && state.hasOlder && !state.loadingOlder && candidates.length) {
      loadOlder(); // the replay holds fewer messages than are unread
    }
    first = candidates[Math.max(0, candidates.length - spec.count)] || null;
  } else {
    first = rows.find((r) => Number(r.dataset.id) > spec.seen && !r.classList.contains('mine')) || null;
  }
  if (!first) {
    if (line) line.remove();
    return;
  }
  const node = line || el('div', 'new-line');
  if (!line) {
    node.id = 'new-line';
    node.setAttribute('role', 'separator');
    node.append(el('span', 'new-line-label', 'New messages'));
  }
  if (node.nextElementSibling !== first) first.before(node);
}

/** A room with no messages says so. */
function updateEmptyState() {
  const room = state.currentRoom;
  const empty = !!room && !state.dmWith && !$('messages').querySelector('.msg:not(.deleted)');
  $('room-empty').hidden = !empty;
  if (room) $('room-empty-name').textContent = room;
  updateOlderButton();
}

function addSystemLine(text, timestamp) {
  const node = el('div', 'line system');
  node.append(timeElement(timestamp), el('span', 'content', text));
  appendLine(node);
}

function addInfo(text) {
  appendLine(el('div', 'line info', text), true);
}

/** An error caused by something the user typed: inline and in the error bar. */
function reportError(text, kind) {
  appendLine(el('div', 'line error', text), true);
  showError(text, kind);
}

function clearPane() {
  $('messages').replaceChildren();
  state.seenIds.clear();
  state.messages.clear();
  state.typers.clear();
  state.hasOlder = true;
  state.loadingOlder = false;
  updateOlderButton();
  updateEmptyState();
}

function updateOlderButton() {
  const button = $('load-older');
  // Nothing to page back from in an empty room.
  button.hidden = !state.currentRoom || !!state.dmWith || state.seenIds.size === 0;
  button.disabled = state.loadingOlder || !state.hasOlder;
  button.textContent = state.loadingOlder ? 'Loading…'
    : state.hasOlder ? 'Load older messages' : 'No older messages';
}

function oldestShownId() {
  let oldest = null;
  state.seenIds.forEach((id) => {
    if (oldest === null || id < oldest) oldest = id;
  });
  return oldest;
}

/** Loads one older page; resolves true when it added something. */
async function loadOlder() {
  const room = state.currentRoom;
  if (!room || state.loadingOlder || !state.hasOlder) return false;
  state.loadingOlder = true;
  updateOlderButton();
  const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  const oldest = oldestShownId();
  if (oldest !== null) params.set('before', String(oldest));
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/history?${params}`);
  if (!sameRoom(room, state.currentRoom)) return false; // switched rooms meanwhile
  state.loadingOlder = false;
  let added = false;
  if (!result.ok) {
    showError(result.error, 'history');
  } else {
    clearError('history');
    const messages = (result.json.data && result.json.data.messages) || [];
    prependHistory(messages);
    added = messages.length > 0;
    if (messages.length < HISTORY_PAGE) state.hasOlder = false;
  }
  updateOlderButton();
  placeNewLine();
  return added;
}

/** Adds history rows while keeping what the user is looking at in place. */
function prependHistory(messages) {
  const box = scroller();
  const heightBefore = box.scrollHeight;
  const topBefore = box.scrollTop;
  messages.forEach((m) => addRoomMessage(
    {
      id: m.id, user: m.nickname, content: m.content, timestamp: m.createdAt,
      action: m.action === true, editedAt: m.editedAt || null,
    },
    { noScroll: true },
  ));
  box.scrollTop = topBefore + (box.scrollHeight - heightBefore);
}

// ------------------------------------------------------------------ editing and deleting one's own messages

function onMessagesClick(event) {
  const button = event.target.closest('button');
  if (!button) return;
  const row = button.closest('.msg[data-id]');
  if (!row) return;
  const id = Number(row.dataset.id);
  if (button.classList.contains('msg-edit')) startEdit(row, id);
  else if (button.classList.contains('msg-delete')) askDelete(row, id);
  else if (button.classList.contains('confirm-delete')) deleteMessage(row, id);
  else if (button.classList.contains('cancel-delete') || button.classList.contains('edit-cancel')) cancelRowAction(row, id);
  else if (button.classList.contains('edit-save')) saveEdit(row, id);
}

function startEdit(row, id) {
  const message = state.messages.get(id);
  if (!message || row.classList.contains('editing')) return;
  row.classList.add('editing');
  const form = el('span', 'edit-box');
  const input = el('input', 'edit-input');
  input.type = 'text';
  input.value = message.content;
  input.maxLength = 2000;
  input.setAttribute('aria-label', 'Edit message');
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') {
      e.preventDefault();
      saveEdit(row, id);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      e.stopPropagation();
      cancelRowAction(row, id);
    }
  });
  const save = el('button', 'edit-save primary small', 'Save');
  save.type = 'button';
  const cancel = el('button', 'edit-cancel ghost small', 'Cancel');
  cancel.type = 'button';
  form.append(input, save, cancel);
  const content = row.querySelector('.content');
  row.querySelector('.msg-actions').hidden = true;
  content.replaceWith(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function cancelRowAction(row, id) {
  const message = state.messages.get(id);
  row.classList.remove('editing', 'confirming');
  if (message) renderMessageBody(row, message);
}

async function saveEdit(row, id) {
  const input = row.querySelector('.edit-input');
  const message = state.messages.get(id);
  if (!input || !message) return;
  const content = input.value;
  if (!content.trim()) {
    askDelete(row, id); // an emptied message: offer to delete it instead
    return;
  }
  if (content === message.content) {
    cancelRowAction(row, id);
    return;
  }
  input.disabled = true;
  const result = await sessionRequest('PATCH', `/api/messages/${id}`, { content });
  if (!result.ok) {
    input.disabled = false;
    input.focus();
    showError(`Could not edit the message: ${result.error}`, 'edit');
    return;
  }
  clearError('edit');
  const data = result.json.data || {};
  message.content = content;
  message.editedAt = data.editedAt || message.editedAt || new Date().toISOString();
  row.classList.remove('editing');
  if (state.messages.has(id)) renderMessageBody(row, message);
  $('message-input').focus();
}

function askDelete(row, id) {
  if (!state.messages.has(id)) return;
  row.classList.remove('editing');
  renderMessageBody(row, state.messages.get(id));
  row.classList.add('confirming');
  const actions = row.querySelector('.msg-actions');
  const yes = el('button', 'confirm-delete danger small', 'Delete');
  yes.type = 'button';
  const no = el('button', 'cancel-delete ghost small', 'Cancel');
  no.type = 'button';
  actions.replaceChildren(el('span', 'confirm-text', 'Delete this message?'), yes, no);
  yes.focus();
}

async function deleteMessage(row, id) {
  const result = await sessionRequest('DELETE', `/api/messages/${id}`);
  if (!result.ok) {
    showError(`Could not delete the message: ${result.error}`, 'delete');
    cancelRowAction(row, id);
    return;
  }
  clearError('delete');
  handleDelete({ id, room: state.currentRoom });
  $('message-input').focus();
}

// ------------------------------------------------------------------ search in the current room

async function onSearchSubmit(event) {
  event.preventDefault();
  const query = $('search-input').value.trim();
  const room = state.currentRoom;
  if (!query) {
    closeSearch();
    return;
  }
  if (!room) {
    showError('Join a room to search its messages.', 'search');
    return;
  }
  const params = new URLSearchParams({ q: query, limit: String(SEARCH_LIMIT) });
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/search?${params}`);
  if (!sameRoom(room, state.currentRoom)) return;
  if (!result.ok) {
    showError(`Search failed: ${result.error}`, 'search');
    return;
  }
  clearError('search');
  renderSearchResults(room, query, (result.json.data && result.json.data.messages) || []);
}

function renderSearchResults(room, query, messages) {
  const panel = $('search-results');
  const list = $('search-list');
  $('search-summary').textContent = messages.length
    ? `${messages.length} result${messages.length === 1 ? '' : 's'} for “${query}” in #${room}`
    : `No messages in #${room} match “${query}”.`;
  list.replaceChildren(...messages.map((m) => {
    const li = el('li', 'search-hit');
    const button = el('button', 'search-hit-btn');
    button.type = 'button';
    button.dataset.id = String(m.id);
    const date = new Date(m.createdAt);
    const when = el('time', 'search-time', Number.isNaN(date.getTime()) ? '' : date.toLocaleString([], {
      month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
    }));
    const nick = el('span', 'nick', m.action ? `* ${m.nickname}` : m.nickname);
    nick.style.setProperty('--nick-color', nickColor(m.nickname || ''));
    const text = el('span', 'search-text', m.content);
    button.append(when, nick, text);
    li.append(button);
    return li;
  }));
  panel.hidden = false;
}

function closeSearch() {
  $('search-results').hidden = true;
  $('chat-screen').classList.remove('search-open');
}

/** Scrolls to a search hit, loading older pages until it is in the pane. */
async function onSearchHitClick(event) {
  const button = event.target.closest('button.search-hit-btn');
  if (!button) return;
  const id = Number(button.dataset.id);
  showRoomView();
  for (let page = 0; !messageNode(id) && page < 20; page++) {
    if (!(await loadOlder())) break;
  }
  const node = messageNode(id);
  if (!node) {
    showError('That message is no longer in the room.', 'search');
    return;
  }
  closeSearch();
  node.scrollIntoView({ block: 'center' });
  node.classList.remove('flash');
  void node.offsetWidth; // restart the highlight animation
  node.classList.add('flash');
}

// ------------------------------------------------------------------ current room

/** Shows `room` (or no room); clears the pane only when the room really changes. */
function switchRoom(room) {
  if (sameRoom(room, state.currentRoom)) {
    state.currentRoom = room; // keep the server's spelling
    renderRoomHeader();
    return;
  }
  state.currentRoom = room;
  saveSetting(STORE_ROOM, room);
  if (!state.newLine || !sameRoom(state.newLine.room, room)) state.newLine = null;
  clearPane();
  closeSearch();
  renderTyping();
  renderRoomHeader();
  renderRooms();
  renderMembers([]);
}

function renderRoomHeader() {
  const room = state.currentRoom;
  const dm = state.dmWith;
  $('current-room').textContent = dm || room || '';
  $('room-hash').textContent = dm ? '@' : '#';
  $('chat-screen').classList.toggle('no-room', !room && !dm);
  $('empty-state').hidden = !!room || !!dm;
  $('search-form').hidden = !room || !!dm;
  $('search-input').placeholder = room ? `Search #${room}` : 'Search';
  const input = $('message-input');
  if (dm) input.placeholder = `Message @${dm}`;
  else input.placeholder = room ? `Message #${room}  (or /help)` : 'Join a room, or type /help';
  updateEmptyState();
  updateTitle();
  updateOlderButton();
}

function resetChatView() {
  state.dmWith = null;
  $('dm-messages').replaceChildren();
  $('messages').hidden = false;
  $('dm-messages').hidden = true;
  $('dm-empty').hidden = true;
  $('chat-screen').classList.remove('dm-view');
  clearPane();
  closeSearch();
  renderRoomHeader();
  $('room-list').replaceChildren();
  renderDms();
  $('rooms-empty').hidden = true;
  renderMembers([]);
  renderTyping();
  closeDrawers();
}

// ------------------------------------------------------------------ input

async function onMessageSubmit(event) {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value;
  if (!text.trim()) return;
  // The input empties at once; a command is never left in it (its error says
  // what went wrong); a message that could not be sent comes back to resend.
  input.value = '';
  const isCommand = text.trimStart().startsWith('/');
  if (isCommand) {
    await runCommand(text.trim());
    return;
  }
  const ok = state.dmWith
    ? await runCommand(`/dm ${state.dmWith} ${text}`, true)
    : await sendMessage(text);
  if (!ok && !input.value) input.value = text;
}

async function sendMessage(content) {
  const result = await sessionPost('/api/message', { content });
  if (!result.ok) {
    reportError(result.error, 'send');
    return false;
  }
  clearError('send', 'connection', 'command');
  return true;
}

/** A clearer answer than the server's usage line for mistakes people make often. */
function localCommandProblem(name, args) {
  if (name === '/create' || name === '/join') {
    const rest = name === '/create' && args.length > 1 && args[args.length - 1].toLowerCase() === 'private'
      ? args.slice(0, -1) : args;
    if (rest.length > 1) return roomNameProblem(rest.join(' '));
  }
  return null;
}

async function runCommand(text, fromDmView) {
  const words = text.split(/\s+/);
  const name = words[0].toLowerCase();
  if (name === '/quit') {
    await logout();
    return true;
  }
  const problem = localCommandProblem(name, words.slice(1));
  if (problem) {
    reportError(`${text}: ${problem}`, 'command');
    return false;
  }
  if (name === '/join' && words[1]) prepareNewLine(roomKey(words[1]));
  const result = await sessionPost('/api/command', { command: text });
  if (!result.ok) {
    if (fromDmView) showError(result.error, 'send');
    else reportError(result.error, 'command');
    return false;
  }
  clearError('command', 'send');
  applyCommandResult(name, words[1], result.json.message, text.slice(words[0].length).trim());
  return true;
}

/** What the page does after a successful command (output is shown as an info block). */
function applyCommandResult(name, firstArg, output, rest) {
  switch (name) {
    case '/dm':
    case '/msg':
      // The `dm` event shows it; a DM kept for an offline user has no event.
      if (output && /is offline/.test(output)) {
        if (state.dmWith && firstArg && state.dmWith.toLowerCase() === firstArg.toLowerCase()) {
          appendDmRow({ from: state.nickname, to: firstArg, content: output, createdAt: new Date().toISOString() }, true);
          return;
        }
        break;
      }
      return;
    case '/me':
      return; // the message itself shows it
    case '/join':
    case '/create':
      // The stream's `connected` event switches the view and replays recent messages.
      afterRoomCommand(firstArg && roomKey(firstArg));
      return;
    case '/leave':
    case '/part':
      state.targetRoom = null;
      showRoomView();
      switchRoom(null);
      refreshRooms();
      break;
    case '/nick':
      if (firstArg) setNickname(firstArg);
      break;
    case '/away':
    case '/back':
      state.myStatus = name === '/back' ? { status: 'online', message: null } : { status: 'away', message: rest || null };
      renderMe();
      refreshMembers();
      break;
    default:
      break;
  }
  if (output) addInfo(output);
  if (state.dmWith) showRoomView(); // command output shows in the room pane
}

function setNickname(nickname) {
  state.nickname = nickname;
  saveSetting(STORE_NICK, nickname);
  renderMe();
  refreshMembers();
}

// ------------------------------------------------------------------ narrow-screen drawers

function toggleDrawer(which) {
  const screen = $('chat-screen');
  const cls = `${which}-open`;
  const open = !screen.classList.contains(cls);
  closeDrawers();
  if (open) screen.classList.add(cls);
}

function closeDrawers() {
  $('chat-screen').classList.remove('rooms-open', 'members-open');
}

function toggleSearchBar() {
  const screen = $('chat-screen');
  const open = !screen.classList.contains('search-open');
  screen.classList.toggle('search-open', open);
  if (open) $('search-input').focus();
  else closeSearch();
}

// ------------------------------------------------------------------ page lifecycle

function onPageHide() {
  if (!state.sessionId) return;
  flushRead(true);
  sendDisconnect();
  closeStream();
  state.sessionId = null;
  state.suspended = true;
}

function onPageShow(event) {
  // Restored from the back/forward cache: the old session was ended on pagehide.
  if (event.persisted && state.suspended && state.nickname) {
    state.suspended = false;
    reconnect();
  }
}

/** Back on the tab: what arrived meanwhile is seen now (below a "New messages" line). */
function onVisibilityChange() {
  if (document.visibilityState !== 'visible' || !state.currentRoom || state.dmWith) return;
  const info = unreadOf(state.currentRoom);
  if (info.unread && !(state.newLine && sameRoom(state.newLine.room, state.currentRoom))) {
    state.newLine = { room: roomKey(state.currentRoom), seen: info.seen || 0 };
    placeNewLine();
  }
  markCurrentRoomSeen();
}

function init() {
  $('nick-form').addEventListener('submit', onNickSubmit);
  $('register-submit').addEventListener('click', () => submitLogin(true));
  $('error-close').addEventListener('click', hideError);
  $('room-list').addEventListener('click', onRoomListClick);
  $('dm-list').addEventListener('click', onDmListClick);
  $('new-room-form').addEventListener('submit', onCreateRoom);
  $('message-form').addEventListener('submit', onMessageSubmit);
  $('message-input').addEventListener('input', onMessageInput);
  $('messages').addEventListener('click', onMessagesClick);
  $('load-older').addEventListener('click', loadOlder);
  $('logout-btn').addEventListener('click', () => logout());
  $('notify-btn').addEventListener('click', onNotifyClick);
  $('search-form').addEventListener('submit', onSearchSubmit);
  $('search-close').addEventListener('click', closeSearch);
  $('search-list').addEventListener('click', onSearchHitClick);
  $('toggle-search').addEventListener('click', toggleSearchBar);
  $('toggle-rooms').addEventListener('click', () => toggleDrawer('rooms'));
  $('toggle-members').addEventListener('click', () => toggleDrawer('members'));
  $('backdrop').addEventListener('click', closeDrawers);
  $('message-scroller').addEventListener('scroll', () => {
    if (isNearBottom()) markCurrentRoomSeen();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      closeDrawers();
      closeSearch();
    }
  });
  document.addEventListener('visibilitychange', onVisibilityChange);
  window.addEventListener('pagehide', onPageHide);
  window.addEventListener('pageshow', onPageShow);
  renderRoomHeader();
  renderNotifyButton();
  autoLogin();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
