// Live page: keeps a WebSocket to /ws open, applies the server's messages to
// a copy of the night, and redraws the hypnogram after each one.
//
// Messages (see src/protocol.rs):
//   snapshot          the whole night, which replaces the copy
//   update            epochs start .. start + sleep_stages.length changed;
//                     the timeline now contains epoch_count epochs
//   session_complete  the final arrays, the report's address and headline
// Each carries the night's staging (two_stage or four_stage), which sets
// the lanes, and its figures so far, computed by the server.
//
// After each redraw #hypnogram carries data-epochs (epochs drawn) and
// data-staging, each figure's <dd> carries data-value (the number as the
// server sent it, absent without one), #current-stage carries data-stage
// and data-seconds, and #connection carries data-state (connecting, live
// or reconnecting).
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';

  // Twins of the layout constants in src/hypnogram.rs, so the live picture
  // matches the report's.
  const WIDTH = 960;
  const LEFT = 72;
  const RIGHT = 16;
  const TOP = 8;
  const LANE_HEIGHT = 36;
  const BLOCK_INSET = 4;
  const SNORING_GAP = 10;
  const SNORING_HEIGHT = 18;
  const AXIS_HEIGHT = 30;
  const PLOT_WIDTH = WIDTH - LEFT - RIGHT;
  const TICK_SEARCH_STEP_MS = 15 * 60 * 1000;

  // Lanes from top to bottom for each staging the server sends. Asleep's
  // basic plan analyses wake and sleep only.
  const LANES = {
    four_stage: ['wake', 'rem', 'light', 'deep'],
    two_stage: ['wake', 'sleep'],
  };
  const LANE_DESCRIPTIONS = { four_stage: 'wake, REM, light sleep, deep sleep', two_stage: 'wake, sleep' };
  const FOUR_STAGE_BY_CODE = { 0: 'wake', 1: 'light', 2: 'deep', 3: 'rem' };
  const LANE_LABELS = { wake: 'Wake', rem: 'REM', light: 'Light', deep: 'Deep', sleep: 'Sleep' };
  const STAGE_NAMES = { wake: 'Awake', rem: 'REM sleep', light: 'Light sleep', deep: 'Deep sleep', sleep: 'Asleep' };
  const STAGE_FILLS = { wake: '#f2a541', rem: '#8e5bd1', light: '#72a9e0', deep: '#1f3f8f', sleep: '#4a78c2' };

  // Reconnect delays double from 1 s up to 30 s. Each delay is spread by
  // ±20 % so browsers that lost the server together do not return together,
  // and is never above 30 s.
  const RECONNECT_BASE_MS = 1000;
  const RECONNECT_MAX_MS = 30000;
  const RECONNECT_JITTER = 0.2;
  // Failed attempts in a row after which the page suggests the link expired:
  // the browser does not tell a script why an upgrade was refused.
  const FAILURES_BEFORE_HINT = 3;

  const config = JSON.parse(document.getElementById('live-config').textContent);
  const element = (id) => document.getElementById(id);
  const svg = element('hypnogram');
  const connection = element('connection');
  const viewerZone = new Intl.DateTimeFormat().resolvedOptions().timeZone || 'your time zone';

  const night = {
    sessionId: null,
    epochSeconds: 30,
    sleep: [],
    snoring: [],
    startMs: null,
    startEstimated: true,
    timezone: null,
    endMs: null,
    complete: false,
    reportUrl: null,
    headline: null,
    // Four lanes, as the server renders the empty page, until a message names the staging.
    staging: 'four_stage',
    figures: null,
  };

  // ---- Applying messages ----

  function applyClock(message) {
    const start = message.start_time ? Date.parse(message.start_time) : NaN;
    night.startMs = Number.isFinite(start) ? start : null;
    night.startEstimated = message.start_time_estimated !== false;
    night.timezone = validZone(message.timezone);
  }

  // Staging and figures come with every message and replace the old ones.
  function applyFigures(message) {
    night.staging = message.staging in LANES ? message.staging : 'four_stage';
    night.figures = message.figures || null;
  }

  function validZone(zone) {
    if (!zone) return null;
    try {
      new Intl.DateTimeFormat('en-GB', { timeZone: zone });
      return zone;
    } catch (error) {
      console.warn('unknown time zone from the server; showing times in the viewer zone', zone);
      return null;
    }
  }

  // The report's address becomes a link and a fetch, so only a path on
  // this server is accepted. A `javascript:` URL would run as script, and
  // `//host` or `/\host` (which browsers read as `//host`) would lead to
  // another origin.
  function localPath(url) {
    if (typeof url !== 'string' || url === '') return null;
    if (url.startsWith('/') && !url.startsWith('//') && !url.startsWith('/\\')) return url;
    console.warn('ignoring a report address that is not a path on this server', url);
    return null;
  }

  function applySnapshot(message) {
    night.sessionId = message.session_id || null;
    night.epochSeconds = message.epoch_seconds || 30;
    night.sleep = Array.from(message.sleep_stages || []);
    night.snoring = Array.from(message.snoring_stages || []);
    applyClock(message);
    night.complete = Boolean(message.complete);
    night.reportUrl = localPath(message.report_url);
    night.endMs = null;
    night.headline = null;
    applyFigures(message);
    if (night.complete && night.reportUrl) {
      fetchCompletedNight(night.sessionId, night.reportUrl);
    }
  }

  function applyUpdate(message) {
    if (message.session_id !== night.sessionId) {
      // A new night always starts with a snapshot, so this cannot be ours.
      console.warn('ignoring an update for another session', message.session_id);
      return;
    }
    const count = Math.max(message.epoch_count || 0, message.start + message.sleep_stages.length);
    while (night.sleep.length < count) night.sleep.push(-1);
    while (night.snoring.length < count) night.snoring.push(-1);
    message.sleep_stages.forEach((value, offset) => {
      night.sleep[message.start + offset] = value;
    });
    message.snoring_stages.forEach((value, offset) => {
      night.snoring[message.start + offset] = value;
    });
    applyClock(message);
    applyFigures(message);
  }

  function applySessionComplete(message) {
    if (night.sessionId !== null && message.session_id !== night.sessionId) {
      console.warn('ignoring a final report for another session', message.session_id);
      return;
    }
    night.sessionId = message.session_id;
    night.sleep = Array.from(message.sleep_stages);
    night.snoring = Array.from(message.snoring_stages);
    applyClock(message);
    const end = message.end_time ? Date.parse(message.end_time) : NaN;
    night.endMs = Number.isFinite(end) ? end : null;
    night.complete = true;
    night.reportUrl = localPath(message.report_url);
    night.headline = message.headline || null;
    applyFigures(message);
  }

  // A snapshot of a completed night carries no headline, so it is fetched
  // from the JSON API.
  async function fetchCompletedNight(sessionId, reportUrl) {
    try {
      // The viewer cookie authorizes the request: fetch sends it to this origin.
      const response = await fetch(`/api${reportUrl}`, {
        headers: { Accept: 'application/json' },
        credentials: 'same-origin',
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const session = await response.json();
      if (night.sessionId !== sessionId) return;
      night.headline = session.headline;
      const end = session.end_time ? Date.parse(session.end_time) : NaN;
      night.endMs = Number.isFinite(end) ? end : null;
      render();
    } catch (error) {
      console.warn('loading the completed night failed', error);
    }
  }

  function handleMessage(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch (error) {
      console.warn('ignoring a message that is not JSON', error);
      return;
    }
    switch (message.type) {
      case 'snapshot':
        applySnapshot(message);
        reconnectAttempts = 0;
        setConnection('live');
        break;
      case 'update':
        applyUpdate(message);
        break;
      case 'session_complete':
        applySessionComplete(message);
        break;
      default:
        console.warn('ignoring a message of unknown type', message.type);
        return;
    }
    render();
  }

  // ---- Formatting ----

  function formatDuration(seconds) {
    if (seconds === 0) return '0 min';
    if (Math.abs(seconds) < 60) return `${Math.round(seconds)} s`;
    const minutes = Math.round(seconds / 60);
    const hours = Math.trunc(minutes / 60);
    const rest = minutes % 60;
    if (hours === 0) return `${rest} min`;
    if (rest === 0) return `${hours} h`;
    return `${hours} h ${rest} min`;
  }

  function formatPercent(percent) {
    const rounded = Math.round(percent * 10) / 10;
    return Number.isInteger(rounded) ? `${rounded}%` : `${rounded.toFixed(1)}%`;
  }

  // The zone clock times are shown in: the session's once the final report
  // named it, the viewer's before.
  function displayZone() {
    return night.timezone || undefined;
  }

  function clockParts(ms, withZoneName) {
    const options = { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZone: displayZone() };
    if (withZoneName) options.timeZoneName = 'short';
    const parts = {};
    // en-US names US zones' offsets EDT and EST, as the server's labels do.
    for (const part of new Intl.DateTimeFormat('en-US', options).formatToParts(new Date(ms))) {
      parts[part.type] = part.value;
    }
    return parts;
  }

  function formatClock(ms) {
    const parts = clockParts(ms, false);
    return `${parts.hour}:${parts.minute}`;
  }

  function formatDateTime(ms) {
    return new Intl.DateTimeFormat('en-GB', {
      weekday: 'short', day: 'numeric', month: 'short', year: 'numeric',
      hour: '2-digit', minute: '2-digit', hourCycle: 'h23',
      timeZone: displayZone(), timeZoneName: 'short',
    }).format(new Date(ms));
  }

  // ---- Drawing ----

  function tickStepHours(durationSeconds) {
    if (durationSeconds <= 12 * 3600) return 1;
    if (durationSeconds <= 24 * 3600) return 2;
    if (durationSeconds <= 36 * 3600) return 3;
    return 4;
  }

  // Ticks at full local hours, found by walking UTC instants on a
  // 15-minute grid as src/hypnogram.rs does, so an hour repeated when
  // daylight saving time ends gets two ticks.
  function hourTicks(startMs, endMs) {
    const step = tickStepHours((endMs - startMs) / 1000);
    const offsetChanges = clockParts(startMs, true).timeZoneName !== clockParts(endMs, true).timeZoneName;
    const ticks = [];
    for (let t = Math.ceil(startMs / TICK_SEARCH_STEP_MS) * TICK_SEARCH_STEP_MS; t <= endMs; t += TICK_SEARCH_STEP_MS) {
      const parts = clockParts(t, offsetChanges);
      if (Number(parts.minute) === 0 && Number(parts.hour) % step === 0) {
        const label = `${parts.hour}:${parts.minute}` + (offsetChanges ? ` ${parts.timeZoneName}` : '');
        ticks.push({ offsetSeconds: (t - startMs) / 1000, label });
      }
    }
    return ticks;
  }

  function elapsedTicks(durationSeconds) {
    const step = tickStepHours(durationSeconds);
    const ticks = [];
    for (let hour = 0; hour * 3600 <= durationSeconds; hour += step) {
      ticks.push({ offsetSeconds: hour * 3600, label: `${hour} h` });
    }
    return ticks;
  }

  function runs(values) {
    const result = [];
    let start = 0;
    while (start < values.length) {
      let end = start + 1;
      while (end < values.length && values[end] === values[start]) end += 1;
      result.push({ start, length: end - start, value: values[start] });
      start = end;
    }
    return result;
  }

  // Returns the lane of a stage code, or undefined for no data. In a
  // two-stage night every sleep code is drawn as sleep, as the server
  // counts it.
  function stageOf(code) {
    if (night.staging === 'two_stage') {
      if (code === 0) return 'wake';
      return code >= 1 && code <= 3 ? 'sleep' : undefined;
    }
    return FOUR_STAGE_BY_CODE[code];
  }

  // Vertical positions, which depend on the number of lanes.
  function layout(laneCount) {
    const lanesBottom = TOP + LANE_HEIGHT * laneCount;
    const snoringTop = lanesBottom + SNORING_GAP;
    const axisTop = snoringTop + SNORING_HEIGHT + 4;
    return { lanesBottom, snoringTop, axisTop, height: axisTop + AXIS_HEIGHT };
  }

  function create(name, attributes, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function describe(epochs) {
    if (epochs === 0) return 'No epochs recorded yet.';
    const length = formatDuration(epochs * night.epochSeconds);
    let text = `${length} in ${epochs} epochs of ${night.epochSeconds} seconds.`;
    if (night.startMs !== null) {
      const zone = night.timezone || viewerZone;
      const end = night.startMs + epochs * night.epochSeconds * 1000;
      const estimated = night.startEstimated ? ', estimated' : '';
      text = `From ${formatClock(night.startMs)} to ${formatClock(end)} (${zone}${estimated}), ${text}`;
    }
    text += ` Lanes from top to bottom: ${LANE_DESCRIPTIONS[night.staging]}, then snoring.`;
    const unknown = night.sleep.filter((code) => stageOf(code) === undefined).length;
    if (unknown > 0) text += ` ${unknown} epochs have no data and are left as gaps.`;
    return text;
  }

  function drawHypnogram() {
    const epochs = night.sleep.length;
    const lanes = LANES[night.staging];
    const { lanesBottom, snoringTop, axisTop, height } = layout(lanes.length);
    const x = (epoch) => LEFT + (epoch * PLOT_WIDTH) / Math.max(epochs, 1);
    const laneTop = (stage) => TOP + lanes.indexOf(stage) * LANE_HEIGHT;
    const fragment = document.createDocumentFragment();

    fragment.append(
      create('title', { id: 'hypnogram-title' }, night.sessionId ? `Live hypnogram of session ${night.sessionId}` : 'Live hypnogram'),
      create('desc', { id: 'hypnogram-desc' }, describe(epochs)),
    );

    const laneGroup = create('g', { class: 'lanes' });
    lanes.forEach((stage, index) => {
      const top = laneTop(stage);
      laneGroup.append(
        create('rect', {
          class: `lane lane-${stage}`, 'data-stage': stage, x: LEFT, y: top,
          width: PLOT_WIDTH, height: LANE_HEIGHT, fill: index % 2 === 0 ? '#f4f4f4' : '#fbfbfb',
        }),
        create('text', {
          class: 'lane-label', x: LEFT - 8, y: top + LANE_HEIGHT / 2, 'text-anchor': 'end', 'dominant-baseline': 'middle',
        }, LANE_LABELS[stage]),
      );
    });
    laneGroup.append(
      create('rect', { class: 'lane lane-snoring', x: LEFT, y: snoringTop, width: PLOT_WIDTH, height: SNORING_HEIGHT, fill: '#f4f4f4' }),
      create('text', {
        class: 'lane-label', x: LEFT - 8, y: snoringTop + SNORING_HEIGHT / 2, 'text-anchor': 'end', 'dominant-baseline': 'middle',
      }, 'Snoring'),
    );
    fragment.append(laneGroup);

    const gaps = create('g', { class: 'gaps' });
    const stages = create('g', { class: 'stages' });
    let transitions = '';
    let previous = null;
    for (const run of runs(night.sleep.map(stageOf))) {
      const stage = run.value;
      const left = x(run.start);
      const width = (x(run.start + run.length) - left).toFixed(2);
      if (stage === undefined) {
        const gap = create('rect', {
          class: 'gap', 'data-start': run.start, 'data-epochs': run.length, x: left.toFixed(2), y: TOP,
          width, height: lanesBottom - TOP, fill: '#d0d0d0', 'fill-opacity': 0.5,
        });
        gap.append(create('title', {}, `${formatDuration(run.length * night.epochSeconds)} without data`));
        gaps.append(gap);
        previous = null;
        continue;
      }
      stages.append(create('rect', {
        class: `stage stage-${stage}`, 'data-stage': stage, 'data-start': run.start, 'data-epochs': run.length,
        x: left.toFixed(2), y: laneTop(stage) + BLOCK_INSET, width, height: LANE_HEIGHT - 2 * BLOCK_INSET,
        fill: STAGE_FILLS[stage],
      }));
      if (previous !== null && previous.end === run.start) {
        transitions += `M${x(previous.end).toFixed(2)} ${laneTop(previous.stage) + LANE_HEIGHT / 2}V${laneTop(stage) + LANE_HEIGHT / 2}`;
      }
      previous = { stage, end: run.start + run.length };
    }
    if (transitions) {
      stages.append(create('path', { class: 'transitions', d: transitions, stroke: '#555', 'stroke-width': 1, fill: 'none' }));
    }
    fragment.append(gaps, stages);

    const snoring = create('g', { class: 'snoring' });
    for (const run of runs(night.snoring.slice(0, epochs))) {
      if (run.value !== 1) continue;
      const left = x(run.start);
      snoring.append(create('rect', {
        class: 'snore', 'data-start': run.start, 'data-epochs': run.length, x: left.toFixed(2), y: snoringTop,
        width: (x(run.start + run.length) - left).toFixed(2), height: SNORING_HEIGHT, fill: '#c8553d',
      }));
    }
    fragment.append(snoring);

    const axis = create('g', { class: 'axis' });
    axis.append(create('line', { class: 'axis-line', x1: LEFT, y1: axisTop, x2: LEFT + PLOT_WIDTH, y2: axisTop, stroke: '#555' }));
    const totalSeconds = epochs * night.epochSeconds;
    const ticks = night.startMs === null
      ? elapsedTicks(totalSeconds)
      : hourTicks(night.startMs, night.startMs + totalSeconds * 1000);
    for (const tick of ticks) {
      const tickX = LEFT + (tick.offsetSeconds / Math.max(totalSeconds, 1)) * PLOT_WIDTH;
      let anchor = 'middle';
      if (tickX < LEFT + 24) anchor = 'start';
      else if (tickX > LEFT + PLOT_WIDTH - 24) anchor = 'end';
      const group = create('g', { class: 'tick', 'data-offset-seconds': Math.round(tick.offsetSeconds) });
      group.append(
        create('line', {
          x1: tickX.toFixed(2), y1: TOP, x2: tickX.toFixed(2), y2: axisTop + 5, stroke: '#999', 'stroke-width': 0.5, 'stroke-dasharray': '2 3',
        }),
        create('text', { x: tickX.toFixed(2), y: axisTop + 20, 'text-anchor': anchor }, tick.label),
      );
      axis.append(group);
    }
    fragment.append(axis);

    svg.setAttribute('viewBox', `0 0 ${WIDTH} ${height}`);
    svg.replaceChildren(fragment);
    svg.setAttribute('data-epochs', String(epochs));
    svg.setAttribute('data-staging', night.staging);
  }

  // Shows one figure, or a dash when the server sent none.
  function showFigure(id, value, format) {
    const node = element(id);
    if (value === null || value === undefined) {
      node.textContent = '—';
      node.removeAttribute('data-value');
      return;
    }
    node.textContent = format(value);
    node.setAttribute('data-value', String(value));
  }

  function drawCurrentStage() {
    const node = element('current-stage');
    const current = night.figures ? night.figures.current_stage : null;
    node.setAttribute('data-stage', current ? (current.name || 'none') : '');
    node.setAttribute('data-seconds', current ? String(current.seconds) : '');
    if (!current) {
      node.textContent = '—';
    } else if (current.name in STAGE_NAMES) {
      node.textContent = `${STAGE_NAMES[current.name]} for ${formatDuration(current.seconds)}`;
    } else {
      node.textContent = `No data for the last ${formatDuration(current.seconds)}`;
    }
  }

  function drawFigures() {
    const twoStage = night.staging === 'two_stage';
    for (const node of document.querySelectorAll('.four-stage-only')) node.hidden = twoStage;
    for (const node of document.querySelectorAll('.two-stage-only')) node.hidden = !twoStage;
    // A completed night shows its headline and links to the report instead.
    element('so-far').hidden = night.complete;

    const figures = night.figures || {};
    const percent = (ratio) => formatPercent(ratio * 100);
    showFigure('figure-time-in-sleep', figures.time_in_sleep, formatDuration);
    showFigure('figure-sleep-efficiency', figures.sleep_efficiency, percent);
    showFigure('figure-time-in-wake', figures.time_in_wake, formatDuration);
    showFigure('figure-time-in-light', figures.time_in_light, formatDuration);
    showFigure('figure-time-in-deep', figures.time_in_deep, formatDuration);
    showFigure('figure-time-in-rem', figures.time_in_rem, formatDuration);
    drawCurrentStage();
  }

  function elapsedSeconds() {
    if (night.startMs === null) return night.sleep.length * night.epochSeconds;
    const end = night.complete ? (night.endMs ?? night.startMs + night.sleep.length * night.epochSeconds * 1000) : Date.now();
    return Math.max(0, (end - night.startMs) / 1000);
  }

  function updateElapsed() {
    element('elapsed').textContent = night.sessionId === null ? '—' : formatDuration(elapsedSeconds());
  }

  function drawStatus() {
    const hasNight = night.sessionId !== null;
    element('waiting').hidden = hasNight;
    element('session-label').hidden = !hasNight;
    element('session-id').textContent = night.sessionId || '';
    updateElapsed();

    let start = '—';
    if (night.startMs !== null) {
      // formatDateTime already names the zone.
      const note = night.startEstimated ? ' (estimated)' : '';
      start = formatDateTime(night.startMs) + note;
    }
    element('start-time').textContent = start;
    element('clock-note').textContent = night.timezone && !night.startEstimated
      ? `Times are in the session's time zone, ${night.timezone}.`
      : `Times are estimated from when results arrived and shown in your time zone, ${viewerZone}, until the night completes.`;

    const complete = element('complete');
    complete.hidden = !(night.complete && night.reportUrl);
    if (night.complete && night.reportUrl) {
      element('report-link').href = night.reportUrl;
    }
    const headline = night.headline;
    const show = (id, value) => { element(id).textContent = value; };
    show('headline-total-sleep', headline ? formatDuration(headline.total_sleep_seconds) : '—');
    show('headline-efficiency', headline && headline.sleep_efficiency_percent != null ? formatPercent(headline.sleep_efficiency_percent) : '—');
    show('headline-latency', headline && headline.sleep_latency_seconds != null ? formatDuration(headline.sleep_latency_seconds) : '—');
    show('headline-time-in-bed', headline && headline.time_in_bed_seconds != null ? formatDuration(headline.time_in_bed_seconds) : '—');
  }

  function render() {
    drawHypnogram();
    drawStatus();
    drawFigures();
  }

  // ---- Connection ----

  let socket = null;
  let reconnectAttempts = 0;
  let reconnectTimer = null;

  function setConnection(state, text) {
    const texts = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Connection lost; reconnecting…' };
    connection.setAttribute('data-state', state);
    connection.textContent = text || texts[state];
  }

  function connect() {
    reconnectTimer = null;
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Same origin, so the browser sends the viewer cookie with the upgrade
    // and the address carries no token.
    const current = new WebSocket(`${scheme}//${window.location.host}${config.ws_path}`);
    socket = current;
    current.addEventListener('message', (event) => {
      if (socket === current) handleMessage(event.data);
    });
    // Every failure, refused upgrades included, ends in a close event.
    current.addEventListener('close', () => {
      if (socket !== current) return;
      socket = null;
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const base = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** reconnectAttempts);
    const spread = 1 - RECONNECT_JITTER + 2 * RECONNECT_JITTER * Math.random();
    const delay = Math.min(RECONNECT_MAX_MS, base * spread);
    reconnectAttempts += 1;
    const hint = reconnectAttempts >= FAILURES_BEFORE_HINT
      ? ' If this continues, the viewer link may have expired; ask for a new one.'
      : '';
    setConnection('reconnecting', `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s…${hint}`);
    reconnectTimer = window.setTimeout(connect, delay);
  }

  // A browser that comes back online retries at once instead of waiting
  // out the delay.
  window.addEventListener('online', () => {
    if (reconnectTimer !== null) {
      window.clearTimeout(reconnectTimer);
      connect();
    }
  });

  window.setInterval(updateElapsed, 1000);
  setConnection('connecting');
  render();
  connect();
})();
