/*
 * app.js — all behaviour of the Baby Discord web page (no framework, no build).
 *
 * Owns: the nickname screen (guests, registered users and registration);
 * the session (connect, automatic re-connect, disconnect on /quit and on
 * page unload); the session is named by the HttpOnly bd_session cookie the
 * server sets, never by a token in a URL or in page storage; the one Server-Sent Events stream
 * of the session; the room list, the member list, the message pane (room
 * messages, system lines, DMs, command output, errors, older history) and the
 * input (plain messages and slash commands); the status label and error bar.
 *
 * Talks only to the same-origin HTTP API (docs/protocol.md).
 * Every piece of user or server text is inserted with textContent, never as HTML.
 */
'use strict';

// ------------------------------------------------------------------ settings

const ROOMS_REFRESH_MS = 5000;
const MEMBERS_REFRESH_MS = 10000;
const HISTORY_PAGE = 50;
const MAX_BACKOFF_MS = 15000;
const NEAR_BOTTOM_PX = 120;
const STREAM_READY_TIMEOUT_MS = 5000;
const STORE_NICK = 'babyDiscord.nickname';
const STORE_ROOM = 'babyDiscord.room';

// ------------------------------------------------------------------ state

const state = {
  nickname: null,          // my nickname (as the server knows it)
  sessionId: null,         // set while the page has a session (the cookie names it)
  registered: false,       // logged in to an account: the session outlives reloads
  userId: null,
  currentRoom: null,       // room shown in the pane (set by the stream's `connected`)
  targetRoom: null,        // room the session should be in; used when resuming
  es: null,                // the open EventSource, or null
  streamRoom: null,        // room named in the open stream's URL
  seenIds: new Set(),      // ids of room messages in the pane (de-duplication)
  maxIdByRoom: new Map(),  // lower-case room -> highest message id seen
  rooms: [],               // last room list from the server
  hasOlder: true,          // history may have older messages
  loadingOlder: false,
  reconnecting: null,      // promise while a re-connect is under way
  failures: 0,             // consecutive connection failures (drives backoff)
  epoch: 0,                // bumped on logout; stale async work checks it
  timers: [],
  refreshTimer: null,
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

function roomKey(room) {
  return (room || '').toLowerCase();
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

/** POST for the session (the cookie names it); re-connects and retries once if the session is gone. */
async function sessionPost(path, fields) {
  if (state.reconnecting) await state.reconnecting;
  const send = () => api('POST', path, Object.assign({}, fields));
  let result = await send();
  if (!result.ok && isUnknownSession(result) && state.nickname) {
    if (await reconnect()) result = await send();
  }
  return result;
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

function showError(text) {
  $('error-text').textContent = text;
  $('error-bar').hidden = false;
}

function hideError() {
  $('error-bar').hidden = true;
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
    showError(result.error);
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
    showError(result.error);
    return;
  }
  const room = loadSetting(STORE_ROOM);
  enterChat(room && (await roomExists(room)) ? room : null);
}

function enterChat(room) {
  resetChatView();
  $('login-screen').hidden = true;
  $('chat-screen').hidden = false;
  $('me-nick').textContent = state.nickname;
  state.failures = 0;
  setStatus('connected');
  startTimers();
  refreshRooms();
  refreshDms();
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
    rooms: [], failures: 0,
  });
  state.maxIdByRoom.clear();
  saveSetting(STORE_NICK, null);
  saveSetting(STORE_ROOM, null);
  // Logging out ends a registered user's lasting session too, and clears the cookie.
  if (sessionId || registered) await api('POST', '/api/logout', {});
  resetChatView();
  setStatus('offline');
  $('chat-screen').hidden = true;
  $('login-screen').hidden = false;
  $('nick-input').value = nickname || '';
  if (errorText) showError(errorText);
  $('nick-input').focus();
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
}

/** Debounced refresh of members and rooms (system events can come in bursts). */
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(() => {
    refreshMembers();
    refreshRooms();
  }, 300);
}

// ------------------------------------------------------------------ rooms

async function refreshRooms() {
  const epoch = state.epoch;
  const result = await api('GET', '/api/rooms');
  if (!result.ok || epoch !== state.epoch || $('chat-screen').hidden) return;
  const rooms = (result.json.data && result.json.data.rooms) || [];
  state.rooms = rooms.filter((room) => room && typeof room.name === 'string');
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
}

function createRoomItem(name) {
  const li = el('li', 'room');
  li.dataset.room = name;
  const button = el('button', 'room-btn');
  button.type = 'button';
  button.append(el('span', 'room-name', name), el('span', 'room-count'));
  li.append(button);
  return li;
}

function updateRoomItem(li, room) {
  const count = Number(room.memberCount) || 0;
  li.classList.toggle('active', sameRoom(room.name, state.currentRoom));
  li.querySelector('.room-count').textContent = String(count);
  li.querySelector('.room-btn').title = `${room.name}: ${count} member${count === 1 ? '' : 's'}`;
}

function onRoomListClick(event) {
  const li = event.target.closest('li[data-room]');
  if (li) joinRoom(li.dataset.room);
}

async function joinRoom(room) {
  closeDrawers();
  if (state.reconnecting) await state.reconnecting;
  if (state.es && sameRoom(room, state.currentRoom)) return;
  if (!state.es) {
    openStream(room);
    return;
  }
  const result = await sessionPost('/api/command', { command: `/join ${room}` });
  if (!result.ok) {
    showError(result.error);
    return;
  }
  afterRoomCommand(room);
}

async function onCreateRoom(event) {
  event.preventDefault();
  const input = $('new-room-input');
  const name = input.value.trim();
  const result = await sessionPost('/api/command', { command: `/create ${name}` });
  if (!result.ok) {
    showError(result.error);
    return;
  }
  input.value = '';
  hideError();
  closeDrawers();
  afterRoomCommand(name);
}

/** The session is now in `room`: make sure a stream carries it. */
function afterRoomCommand(room) {
  if (room) {
    state.targetRoom = roomKey(room);
    if (!state.es) openStream(roomKey(room));
  }
  refreshRooms();
}

// ------------------------------------------------------------------ members

async function refreshMembers() {
  const room = state.currentRoom;
  if (!room) {
    renderMembers([]);
    return;
  }
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/members`);
  if (!result.ok || !sameRoom(room, state.currentRoom)) return;
  const members = (result.json.data && result.json.data.members) || [];
  renderMembers(members.map((m) => (typeof m === 'string' ? m : (m && (m.nickname || m.name)) || '')));
}

function renderMembers(members) {
  const items = members
    .filter(Boolean)
    .sort((a, b) => a.toLowerCase().localeCompare(b.toLowerCase()))
    .map(createMemberItem);
  $('members').replaceChildren(...items);
  $('member-count').textContent = state.currentRoom ? `— ${items.length}` : '';
}

function createMemberItem(nick) {
  const li = el('li', isMe(nick) ? 'member me' : 'member', nick);
  li.dataset.nick = nick;
  li.dataset.initial = nick.charAt(0).toUpperCase();
  li.style.setProperty('--nick-color', nickColor(nick));
  return li;
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
  source.addEventListener('connected', (e) => onStreamEvent(source, e, handleConnected));
  source.addEventListener('message', (e) => onStreamEvent(source, e, handleMessage));
  source.addEventListener('system', (e) => onStreamEvent(source, e, handleSystem));
  source.addEventListener('dm', (e) => onStreamEvent(source, e, handleDm));
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
  state.targetRoom = room;
  switchRoom(room);
  refreshMembers();
  refreshRooms();
}

function handleMessage(data) {
  if (data.id === undefined || data.id === null) return;
  if (data.room && !sameRoom(data.room, state.currentRoom)) return; // from a room we left
  const id = Number(data.id);
  const key = roomKey(data.room || state.currentRoom);
  if (id > (state.maxIdByRoom.get(key) || 0)) state.maxIdByRoom.set(key, id);
  addRoomMessage({ id, user: data.user, content: data.content, timestamp: data.timestamp });
}

function handleSystem(data) {
  if (data.room && !sameRoom(data.room, state.currentRoom)) {
    scheduleRefresh();
    return;
  }
  addSystemLine(data.content, data.timestamp);
  scheduleRefresh();
}

function handleDm(data) {
  appendDm(data.from, data.to, data.content, data.timestamp);
  if (state.registered) refreshDms();
}

function appendDm(from, to, content, timestamp) {
  const text = isMe(from) ? `[DM to ${to}] ${content}` : `[DM from ${from}] ${content}`;
  const node = el('div', 'line dm');
  node.append(timeElement(timestamp), el('span', 'content', text));
  appendLine(node, true);
}

// ------------------------------------------------------------------ DM conversations (registered users)

async function refreshDms() {
  const epoch = state.epoch;
  if (!state.registered) {
    renderDms([]);
    return;
  }
  const result = await api('GET', '/api/dms');
  if (!result.ok || epoch !== state.epoch) return;
  renderDms((result.json.data && result.json.data.conversations) || []);
}

function renderDms(conversations) {
  const list = $('dm-list');
  list.replaceChildren();
  conversations.filter((c) => c && typeof c.with === 'string').forEach((c) => {
    const li = el('li', 'room dm-conversation');
    li.dataset.with = c.with;
    const button = el('button', 'room-btn');
    button.type = 'button';
    const unread = Number(c.unread) || 0;
    button.append(el('span', 'room-name', c.with), el('span', 'room-count', unread ? String(unread) : ''));
    button.title = unread ? `${c.with}: ${unread} unread` : c.with;
    li.classList.toggle('unread', unread > 0);
    li.append(button);
    list.append(li);
  });
  const any = list.children.length > 0;
  list.hidden = !any;
  $('dm-title').hidden = !any;
}

/** Shows a conversation's history in the pane and readies the input to answer. */
async function openConversation(nick) {
  const result = await api('GET', `/api/dms/${encodeURIComponent(nick)}/history?limit=${HISTORY_PAGE}`);
  if (!result.ok) {
    showError(result.error);
    return;
  }
  const data = result.json.data || {};
  addSystemLine(`Direct messages with ${data.with || nick}`, null);
  (data.messages || []).forEach((m) => appendDm(m.from, m.to, m.content, m.createdAt));
  const input = $('message-input');
  input.value = `/dm ${data.with || nick} `;
  input.focus();
  closeDrawers();
  refreshDms();
}

function onDmListClick(event) {
  const li = event.target.closest('li[data-with]');
  if (li) openConversation(li.dataset.with);
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
      $('me-nick').textContent = state.nickname;
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
    showError(`Room '${room}' is not available any more.`);
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

/** Appends a non-room line (system, dm, info, error). */
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
  const mine = isMe(message.user);
  const node = el('div', mine ? 'msg mine' : 'msg');
  node.dataset.id = String(id);
  const nick = el('span', 'nick', message.user);
  nick.style.setProperty('--nick-color', nickColor(message.user || ''));
  node.append(timeElement(message.timestamp), nick, el('span', 'content', message.content));
  const stick = !(options && options.noScroll) && (mine || isNearBottom());
  insertById(node, id);
  if (stick) scrollToBottom();
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

function addSystemLine(text, timestamp) {
  const node = el('div', 'line system');
  node.append(timeElement(timestamp), el('span', 'content', text));
  appendLine(node);
}

function addInfo(text) {
  appendLine(el('div', 'line info', text), true);
}

/** An error caused by something the user typed: inline and in the error bar. */
function reportError(text) {
  appendLine(el('div', 'line error', text), true);
  showError(text);
}

function clearPane() {
  $('messages').replaceChildren();
  state.seenIds.clear();
  state.hasOlder = true;
  state.loadingOlder = false;
  updateOlderButton();
}

function updateOlderButton() {
  const button = $('load-older');
  button.hidden = !state.currentRoom;
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

async function loadOlder() {
  const room = state.currentRoom;
  if (!room || state.loadingOlder || !state.hasOlder) return;
  state.loadingOlder = true;
  updateOlderButton();
  const params = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  const oldest = oldestShownId();
  if (oldest !== null) params.set('before', String(oldest));
  const result = await api('GET', `/api/rooms/${encodeURIComponent(room)}/history?${params}`);
  if (!sameRoom(room, state.currentRoom)) return; // switched rooms meanwhile
  state.loadingOlder = false;
  if (!result.ok) {
    showError(result.error);
  } else {
    const messages = (result.json.data && result.json.data.messages) || [];
    prependHistory(messages);
    if (messages.length < HISTORY_PAGE) state.hasOlder = false;
  }
  updateOlderButton();
}

/** Adds history rows while keeping what the user is looking at in place. */
function prependHistory(messages) {
  const box = scroller();
  const heightBefore = box.scrollHeight;
  const topBefore = box.scrollTop;
  messages.forEach((m) => addRoomMessage(
    { id: m.id, user: m.nickname, content: m.content, timestamp: m.createdAt },
    { noScroll: true },
  ));
  box.scrollTop = topBefore + (box.scrollHeight - heightBefore);
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
  clearPane();
  renderRoomHeader();
  renderRooms();
  renderMembers([]);
}

function renderRoomHeader() {
  const room = state.currentRoom;
  $('current-room').textContent = room || '';
  $('chat-screen').classList.toggle('no-room', !room);
  $('empty-state').hidden = !!room;
  $('message-input').placeholder = room ? `Message #${room}  (or /help)` : 'Join a room, or type /help';
  document.title = room ? `#${room} · Baby Discord` : 'Baby Discord';
  updateOlderButton();
}

function resetChatView() {
  clearPane();
  renderRoomHeader();
  $('room-list').replaceChildren();
  renderDms([]);
  $('rooms-empty').hidden = true;
  renderMembers([]);
  closeDrawers();
}

// ------------------------------------------------------------------ input

async function onMessageSubmit(event) {
  event.preventDefault();
  const input = $('message-input');
  const text = input.value;
  if (!text.trim()) return;
  input.value = '';
  const isCommand = text.trimStart().startsWith('/');
  const ok = isCommand ? await runCommand(text.trim()) : await sendMessage(text);
  if (!ok && !input.value) input.value = text; // let the user fix and resend
}

async function sendMessage(content) {
  const result = await sessionPost('/api/message', { content });
  if (!result.ok) {
    reportError(result.error);
    return false;
  }
  hideError();
  return true;
}

async function runCommand(text) {
  const words = text.split(/\s+/);
  const name = words[0].toLowerCase();
  if (name === '/quit') {
    await logout();
    return true;
  }
  const result = await sessionPost('/api/command', { command: text });
  if (!result.ok) {
    reportError(result.error);
    return false;
  }
  hideError();
  applyCommandResult(name, words[1], result.json.message);
  return true;
}

/** What the page does after a successful command (output is shown as an info block). */
function applyCommandResult(name, firstArg, output) {
  switch (name) {
    case '/dm':
      return; // the `dm` event shows it
    case '/join':
    case '/create':
      // The stream's `connected` event switches the view and replays recent messages.
      afterRoomCommand(firstArg);
      return;
    case '/leave':
      state.targetRoom = null;
      switchRoom(null);
      refreshRooms();
      break;
    case '/nick':
      if (firstArg) setNickname(firstArg);
      break;
    default:
      break;
  }
  if (output) addInfo(output);
}

function setNickname(nickname) {
  state.nickname = nickname;
  saveSetting(STORE_NICK, nickname);
  $('me-nick').textContent = nickname;
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

// ------------------------------------------------------------------ page lifecycle

function onPageHide() {
  if (!state.sessionId) return;
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

function init() {
  $('nick-form').addEventListener('submit', onNickSubmit);
  $('register-submit').addEventListener('click', () => submitLogin(true));
  $('error-close').addEventListener('click', hideError);
  $('room-list').addEventListener('click', onRoomListClick);
  $('dm-list').addEventListener('click', onDmListClick);
  $('new-room-form').addEventListener('submit', onCreateRoom);
  $('message-form').addEventListener('submit', onMessageSubmit);
  $('load-older').addEventListener('click', loadOlder);
  $('logout-btn').addEventListener('click', () => logout());
  $('toggle-rooms').addEventListener('click', () => toggleDrawer('rooms'));
  $('toggle-members').addEventListener('click', () => toggleDrawer('members'));
  $('backdrop').addEventListener('click', closeDrawers);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeDrawers();
  });
  window.addEventListener('pagehide', onPageHide);
  window.addEventListener('pageshow', onPageShow);
  renderRoomHeader();
  autoLogin();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();
