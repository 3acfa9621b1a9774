
'use strict';
(function () {
  const API = '/api/v1/face/liveness';
  const body = document.body;
  const threshold = Number.parseFloat(body.dataset.threshold);
  const diagnosticsOn = body.dataset.diagnostics === 'on';
  const $ = (id) => document.getElementById(id);

  // One plain sentence for each quality-gate code.
  const ADVICE = {
    FACE_NOT_FOUND: 'No face was found: face the camera in good light with your whole face in the picture.',
    TOO_MANY_FACES: 'Only one person, please: make sure nobody else is in the picture.',
    FACE_CROPPED: 'Part of your face is cut off: move so that your whole face is inside the picture.',
    FACE_CLOSE_TO_BORDER: 'Your face is too close to the edge: move to the middle of the picture.',
    FACE_TOO_SMALL: 'Your face is too small in the picture: move closer to the camera.',
    FACE_TOO_CLOSE: 'Move further from the camera.',
    FACE_ANGLE_TOO_LARGE: 'Look straight at the camera.',
    FACE_IS_OCCLUDED: 'Remove the mask or anything else covering your face.',
  };
  const GATE_TITLES = {
    FACE_NOT_FOUND: 'No face found',
    TOO_MANY_FACES: 'More than one face',
    FACE_CROPPED: 'Face cut off',
    FACE_CLOSE_TO_BORDER: 'Face at the edge',
    FACE_TOO_SMALL: 'Face too small',
    FACE_TOO_CLOSE: 'Face too close',
    FACE_ANGLE_TOO_LARGE: 'Head turned',
    FACE_IS_OCCLUDED: 'Face covered',
  };
  // Errors in words, by the API's error code (and by HTTP status where the body is not ours).
  const ERRORS = {
    UNAUTHORIZED: 'The user name or password is wrong (HTTP 401). Check the credentials and try again.',
    IMAGE_TOO_LARGE: 'The photo is too large for the service (HTTP 413). Use a smaller file or a lower resolution.',
    INVALID_IMAGE: 'This file could not be read as a photo (HTTP 400). Use a JPEG, PNG or WebP image.',
    INVALID_REQUEST: 'The service did not accept the request (HTTP 400 INVALID_REQUEST).',
    SERVICE_UNAVAILABLE: 'The service cannot check credentials right now (HTTP 503). Try again in a minute.',
    INTERNAL_ERROR: 'The service failed unexpectedly (HTTP 500). Try again; if it keeps failing, see the service log.',
    REQUEST_TIMEOUT: 'The photo took too long to upload (HTTP 408). Try again.',
    NETWORK: 'The service could not be reached. Check that it is running and that this computer is online, then try again.',
  };
  const MODEL_COLOURS = ['#00b0ff', '#ff4081', '#ffab00', '#d500f9'];
  const BOX_COLOUR = '#00ff66';
  const LANDMARK_COLOUR = '#ffeb3b';

  const el = {
    user: $('user'), password: $('password'),
    preview: $('preview'), video: $('video'), cameraNote: $('camera-note'),
    cameraStart: $('camera-start'), capture: $('capture'), cameraStop: $('camera-stop'),
    drop: $('drop'), file: $('file'),
    result: $('result'), status: $('status'), error: $('error'),
    verdict: $('verdict'), verdictLabel: $('verdict-label'), verdictDetail: $('verdict-detail'),
    advice: $('advice'), gaugeValue: $('gauge-value'), gaugeThreshold: $('gauge-threshold'),
    gaugeThresholdLabel: $('gauge-threshold-label'), gaugeScore: $('gauge-score'), gauge: $('gauge'),
    details: $('details'), detailsOff: $('details-off'), detailsBody: $('details-body'),
    photo: $('photo-canvas'), crops: $('crops'), cropsNone: $('crops-none'),
    facts: $('facts').tBodies[0], timings: $('timings').tBodies[0],
  };

  let stream = null;
  let busy = false;
  let runs = 0;

  // ---------------------------------------------------------------- gauge

  const CX = 110, CY = 110, R = 80;
  function gaugePoint(value, radius) {
    const angle = Math.PI * (1 - Math.min(1, Math.max(0, value)));
    return [CX + radius * Math.cos(angle), CY - radius * Math.sin(angle)];
  }
  function drawThreshold() {
    const [x1, y1] = gaugePoint(threshold, R - 14);
    const [x2, y2] = gaugePoint(threshold, R + 14);
    const [lx, ly] = gaugePoint(threshold, R + 24);
    el.gaugeThreshold.setAttribute('x1', x1.toFixed(1));
    el.gaugeThreshold.setAttribute('y1', y1.toFixed(1));
    el.gaugeThreshold.setAttribute('x2', x2.toFixed(1));
    el.gaugeThreshold.setAttribute('y2', y2.toFixed(1));
    el.gaugeThresholdLabel.setAttribute('x', Math.min(175, Math.max(45, lx)).toFixed(1));
    el.gaugeThresholdLabel.setAttribute('y', Math.min(ly + 4, CY).toFixed(1));
    el.gaugeThresholdLabel.textContent = 'threshold ' + threshold.toFixed(2);
  }
  function drawGauge(score) {
    const [x, y] = gaugePoint(score, R);
    const start = gaugePoint(0, R);
    el.gaugeValue.setAttribute('d', score > 0.0005
      ? `M ${start[0]} ${start[1]} A ${R} ${R} 0 0 1 ${x.toFixed(2)} ${y.toFixed(2)}`
      : '');
    el.gaugeScore.textContent = score.toFixed(2);
  }

  // ---------------------------------------------------------------- result display

  function setStatus(text) { el.status.textContent = text; }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
    el.verdict.hidden = true;
    el.verdict.dataset.state = 'error';
    el.details.hidden = true;
    setStatus('The photo was not checked.');
  }

  function clearResult() {
    el.error.hidden = true;
    el.error.textContent = '';
    el.verdict.hidden = true;
    el.verdict.dataset.state = 'checking';
    el.advice.hidden = true;
    el.details.hidden = true;
    el.detailsBody.hidden = true;
    el.detailsOff.hidden = true;
    el.crops.replaceChildren();
    el.facts.replaceChildren();
    el.timings.replaceChildren();
    delete el.photo.dataset.faceBox;
  }

  // Three decimals, or the order of magnitude for scores that would read 0.000.
  function scoreText(score) {
    return score >= 0.001 || score === 0 ? score.toFixed(3) : score.toExponential(1);
  }

  function showScore(score) {
    const live = score >= threshold;
    el.verdict.dataset.state = live ? 'live' : 'attack';
    el.verdict.dataset.score = String(score);
    el.gauge.removeAttribute('hidden');
    drawGauge(score);
    el.gauge.setAttribute('aria-label',
      `Score ${scoreText(score)} of 1; threshold ${threshold.toFixed(2)}`);
    el.verdictLabel.textContent = live ? 'Live' : 'Attack';
    el.verdictDetail.textContent = live
      ? `Score ${scoreText(score)}, at or above the threshold ${threshold.toFixed(2)}: a live person.`
      : `Score ${scoreText(score)}, below the threshold ${threshold.toFixed(2)}: a photo, screen or mask rather than a live person.`;
    el.advice.hidden = true;
    el.verdict.hidden = false;
  }

  function showGate(code) {
    el.verdict.dataset.state = 'gate';
    el.verdict.dataset.code = code;
    delete el.verdict.dataset.score;
    el.gauge.setAttribute('hidden', '');
    el.verdictLabel.textContent = GATE_TITLES[code] || code;
    el.verdictDetail.textContent = `Not scored: the quality check refused the photo (${code}).`;
    el.advice.textContent = ADVICE[code] || 'Take another photo, facing the camera in good light.';
    el.advice.hidden = false;
    el.verdict.hidden = false;
  }

  function fmt(value, digits) {
    return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : 'n/a';
  }

  function addRow(tbody, label, value) {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = label;
    const td = document.createElement('td');
    td.textContent = value;
    tr.append(th, td);
    tbody.append(tr);
  }

  async function showDetails(diag, image, roundTripMs) {
    el.details.hidden = false;
    if (!diag) {
      el.detailsOff.hidden = false;
      return;
    }
    el.detailsBody.hidden = false;
    const bitmap = await loadBitmap(image);
    drawPhoto(diag, bitmap);
    drawCrops(diag, bitmap);
    if (bitmap && bitmap.close) bitmap.close();

    const face = diag.selectedFace;
    const pose = diag.headPoseDeg;
    addRow(el.facts, 'Image', `${diag.image.width} × ${diag.image.height} px`);
    addRow(el.facts, 'Faces found', String(diag.faces.length));
    if (face) {
      const [l, t, r, b] = face.box;
      addRow(el.facts, 'Selected face', `detector score ${fmt(face.score, 3)}; box ${Math.round(r - l)} × ${Math.round(b - t)} px at (${Math.round(l)}, ${Math.round(t)})`);
    }
    addRow(el.facts, 'Head pose', pose
      ? `yaw ${fmt(pose.yaw, 1)}°, pitch ${fmt(pose.pitch, 1)}°, roll ${fmt(pose.roll, 1)}°`
      : 'n/a');
    addRow(el.facts, 'Mask probability', fmt(diag.maskProbability, 3));
    addRow(el.facts, 'Face presence', fmt(diag.facePresence, 3));
    for (const m of diag.antiSpoof) {
      addRow(el.facts, `P(live) ${m.model}`, fmt(m.pLive, 4));
    }
    addRow(el.facts, 'Fused (before calibration)', fmt(diag.fused, 4));
    if (diag.gateDetail) addRow(el.facts, 'Quality gate', diag.gateDetail);

    const t = diag.timingsMs;
    for (const [label, value] of [['Decode', t.decode], ['Detect', t.detect], ['Quality gate', t.gate],
      ['Crop', t.crop], ['Classify', t.classify], ['Pipeline total', t.total]]) {
      addRow(el.timings, label, `${fmt(value, 1)} ms`);
    }
    addRow(el.timings, 'Round trip (this browser)', `${fmt(roundTripMs, 0)} ms`);
  }

  async function loadBitmap(image) {
    try {
      return await createImageBitmap(image, { imageOrientation: 'from-image' });
    } catch (e) {
      return null;
    }
  }

  function drawPhoto(diag, bitmap) {
    const canvas = el.photo;
    const ctx = canvas.getContext('2d');
    const width = diag.image.width, height = diag.image.height;
    const scale = Math.min(1, 960 / Math.max(width, height));
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (bitmap) ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const line = Math.max(2, Math.round(canvas.width / 240));
    ctx.setLineDash([line * 3, line * 2]);
    ctx.lineWidth = line;
    diag.antiSpoof.forEach((m, i) => {
      const [l, t, r, b] = m.crop;
      ctx.strokeStyle = MODEL_COLOURS[i % MODEL_COLOURS.length];
      ctx.strokeRect(l * scale, t * scale, (r - l + 1) * scale, (b - t + 1) * scale);
    });
    ctx.setLineDash([]);
    const face = diag.selectedFace;
    if (!face) return;
    const [l, t, r, b] = face.box;
    ctx.strokeStyle = BOX_COLOUR;
    ctx.lineWidth = line + 1;
    ctx.strokeRect(l * scale, t * scale, (r - l) * scale, (b - t) * scale);
    canvas.dataset.faceBox = [l, t, r, b].map((v) => (v * scale).toFixed(1)).join(',');
    ctx.fillStyle = LANDMARK_COLOUR;
    for (const [x, y] of face.landmarks) {
      ctx.beginPath();
      ctx.arc(x * scale, y * scale, line + 1, 0, 2 * Math.PI);
      ctx.fill();
    }
  }

  function drawCrops(diag, bitmap) {
    el.cropsNone.hidden = diag.antiSpoof.length > 0;
    diag.antiSpoof.forEach((m, i) => {
      const [l, t, r, b] = m.crop;
      const w = r - l + 1, h = b - t + 1;
      const size = 128;
      const canvas = document.createElement('canvas');
      canvas.width = size;
      canvas.height = size;
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#3a3f45';
      ctx.fillRect(0, 0, size, size);
      // The crop resized to a square, as the network gets it; of a crop reaching past the
      // photo only the part inside is drawn (the network pads the rest).
      const sx = Math.max(0, l), sy = Math.max(0, t);
      const ex = Math.min(diag.image.width, r + 1), ey = Math.min(diag.image.height, b + 1);
      if (bitmap && ex > sx && ey > sy) {
        const kx = size / w, ky = size / h;
        ctx.drawImage(bitmap, sx, sy, ex - sx, ey - sy,
          (sx - l) * kx, (sy - t) * ky, (ex - sx) * kx, (ey - sy) * ky);
      }
      ctx.strokeStyle = MODEL_COLOURS[i % MODEL_COLOURS.length];
      ctx.lineWidth = 4;
      ctx.strokeRect(2, 2, size - 4, size - 4);
      canvas.setAttribute('role', 'img');
      canvas.setAttribute('aria-label', `Crop seen by ${m.model}`);
      const figure = document.createElement('figure');
      figure.className = 'crop';
      const caption = document.createElement('figcaption');
      const name = document.createElement('div');
      name.textContent = m.model;
      const p = document.createElement('div');
      p.className = 'p';
      p.textContent = `P(live) ${fmt(m.pLive, 3)}`;
      const dims = document.createElement('div');
      dims.textContent = `${w} × ${h} px crop`;
      caption.append(name, p, dims);
      figure.append(canvas, caption);
      el.crops.append(figure);
    });
  }

  // ---------------------------------------------------------------- the API call

  function basicAuth(user, password) {
    const bytes = new TextEncoder().encode(`${user}:${password}`);
    let binary = '';
    for (const b of bytes) binary += String.fromCharCode(b);
    return 'Basic ' + btoa(binary);
  }

  function toBase64(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        resolve(url.slice(url.indexOf(',') + 1));
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function newSessionId() {
    const random = new Uint32Array(2);
    crypto.getRandomValues(random);
    return `demo-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}`;
  }

  function setBusy(on) {
    busy = on;
    el.result.setAttribute('aria-busy', on ? 'true' : 'false');
    el.capture.disabled = on || !stream;
    el.file.disabled = on;
  }

  async function check(image, source) {
    if (busy) return;
    const user = el.user.value;
    const password = el.password.value;
    if (!user || !password) {
      clearResult();
      showError('Enter the user name and password first (step 1).');
      (user ? el.password : el.user).focus();
      finish();
      return;
    }
    setBusy(true);
    clearResult();
    setStatus(`Checking the photo from the ${source}…`);
    let response;
    let started;
    try {
      const payload = JSON.stringify({ sessionId: newSessionId(), faceImageBase: await toBase64(image) });
      started = performance.now();
      response = await fetch(diagnosticsOn ? `${API}?verbose=1` : API, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: basicAuth(user, password) },
        body: payload,
        cache: 'no-store',
        credentials: 'omit',
        referrerPolicy: 'no-referrer',
      });
    } catch (e) {
      showError(ERRORS.NETWORK);
      finish();
      return;
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (e) {
      answer = null;
    }
    const roundTripMs = performance.now() - started;
    try {
      if (response.ok && answer && answer.hasError === false && typeof answer.score === 'number') {
        showScore(answer.score);
        setStatus(`Checked the photo from the ${source}.`);
        await showDetails(answer.diagnostics, image, roundTripMs);
      } else if (response.ok && answer && answer.hasError === true && ADVICE[answer.error]) {
        showGate(answer.error);
        setStatus(`Checked the photo from the ${source}.`);
        await showDetails(answer.diagnostics, image, roundTripMs);
      } else {
        const code = answer && typeof answer.error === 'string' ? answer.error : '';
        showError(ERRORS[code]
          || (response.status === 401 && ERRORS.UNAUTHORIZED)
          || (response.status === 413 && ERRORS.IMAGE_TOO_LARGE)
          || `Unexpected answer from the service (HTTP ${response.status}${code ? ' ' + code : ''}).`);
      }
    } finally {
      finish();
    }
  }

  function finish() {
    setBusy(false);
    // On a small screen the result is below the camera: bring its first line into view.
    const top = el.status.getBoundingClientRect().top;
    if (top < 0 || top > window.innerHeight - 80) el.result.scrollIntoView({ block: 'start' });
    runs += 1;
    body.dataset.runs = String(runs);
  }

  // ---------------------------------------------------------------- camera

  function cameraNote(text) { el.cameraNote.textContent = text; }

  async function startCamera() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      cameraNote('The browser allows the camera only on HTTPS pages or on this computer (localhost or 127.0.0.1). Use a photo file instead.');
      return;
    }
    el.cameraStart.disabled = true;
    cameraNote('Starting the camera…');
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 1280 }, height: { ideal: 720 }, facingMode: 'user' },
        audio: false,
      });
    } catch (e) {
      stream = null;
      el.cameraStart.disabled = false;
      const reasons = {
        NotAllowedError: 'Camera access was refused. Allow the camera for this page in the browser, or use a photo file.',
        NotFoundError: 'No camera was found. Connect one, or use a photo file.',
        NotReadableError: 'The camera is in use by another program. Close it, or use a photo file.',
      };
      cameraNote(reasons[e && e.name] || `The camera could not be started (${e && e.name ? e.name : 'unknown error'}). Use a photo file instead.`);
      return;
    }
    el.video.srcObject = stream;
    el.preview.hidden = false;
    try {
      await el.video.play();
    } catch (e) {
      // Autoplay of a muted inline video is allowed; a failure here shows as a black preview.
    }
    if (!el.video.videoWidth) {
      await new Promise((resolve) => el.video.addEventListener('loadedmetadata', resolve, { once: true }));
    }
    cameraNote('Look straight at the camera, then press "Capture and check".');
    el.cameraStart.hidden = true;
    el.cameraStart.disabled = false;
    el.cameraStop.hidden = false;
    el.capture.disabled = busy;
    el.capture.focus();
  }

  function stopCamera() {
    if (stream) stream.getTracks().forEach((track) => track.stop());
    stream = null;
    el.video.srcObject = null;
    el.preview.hidden = true;
    el.capture.disabled = true;
    el.cameraStop.hidden = true;
    el.cameraStart.hidden = false;
    cameraNote('The camera is off.');
    el.cameraStart.focus();
  }

  function capture() {
    const video = el.video;
    if (!stream || !video.videoWidth) return;
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (blob) check(blob, 'camera');
      else showError('The camera frame could not be captured. Try again.');
    }, 'image/jpeg', 0.92);
  }

  // ---------------------------------------------------------------- files

  function takeFile(file) {
    if (!file) return;
    if (file.type && !/^image\//.test(file.type)) {
      clearResult();
      showError(`"${file.name}" is not a photo. Use a JPEG, PNG or WebP image.`);
      finish();
      return;
    }
    check(file, 'file');
  }

  el.cameraStart.addEventListener('click', startCamera);
  el.cameraStop.addEventListener('click', stopCamera);
  el.capture.addEventListener('click', capture);
  el.file.addEventListener('change', () => {
    const file = el.file.files && el.file.files[0];
    takeFile(file);
    el.file.value = '';
  });
  // Dropping anywhere must not navigate away from the page; on the drop zone it checks the photo.
  for (const type of ['dragover', 'drop']) {
    window.addEventListener(type, (e) => e.preventDefault());
  }
  el.drop.addEventListener('dragenter', () => el.drop.classList.add('dragging'));
  el.drop.addEventListener('dragleave', () => el.drop.classList.remove('dragging'));
  el.drop.addEventListener('drop', (e) => {
    e.preventDefault();
    el.drop.classList.remove('dragging');
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (!busy) takeFile(file);
  });
  window.addEventListener('pagehide', () => {
    if (stream) stream.getTracks().forEach((track) => track.stop());
  });

  drawThreshold();
  body.dataset.ready = 'true';
})();
