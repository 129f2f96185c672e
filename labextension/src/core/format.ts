/**
 * Small formatters the views share. Pure functions (unit-tested with node --test); times are unix seconds unless
 * named otherwise.
 */

/** Seconds since the epoch, now. */
export function nowSeconds(): number {
  return Date.now() / 1000;
}

/** A duration in seconds as "45s", "3m", "2h", "5d" (the largest unit, rounded down); "–" when unknown. */
export function duration(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return '–';
  }
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)}m`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)}h`;
  }
  return `${Math.floor(s / 86400)}d`;
}

/** How long ago a unix time was: "12s ago", "3m ago", "just now" (under a second); "–" when unknown. */
export function age(at: number | null | undefined, now: number = nowSeconds()): string {
  if (at === null || at === undefined || !Number.isFinite(at)) {
    return '–';
  }
  const d = now - at;
  if (d < 1) {
    return 'just now';
  }
  return `${duration(d)} ago`;
}

/** Milliseconds: "850 ms", "1.2 s", "2m 05s"; "–" when unknown. */
export function ms(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '–';
  }
  if (value < 1000) {
    return `${Math.round(value)} ms`;
  }
  if (value < 60_000) {
    const s = value / 1000;
    return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  }
  const total = Math.round(value / 1000);
  return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, '0')}s`;
}

/** Bytes: "512 B", "1.5 KB", "12 MB" (powers of 1024); "–" when unknown. */
export function bytes(value: number | null | undefined): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '–';
  }
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let v = Math.max(0, value);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) {
    return `${Math.round(v)} B`;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** A unix time as the local "HH:MM:SS" (today) or "YYYY-MM-DD HH:MM" (another day); "–" when unknown. */
export function clock(at: number | null | undefined, now: number = nowSeconds()): string {
  if (at === null || at === undefined || !Number.isFinite(at)) {
    return '–';
  }
  const d = new Date(at * 1000);
  const today = new Date(now * 1000);
  const pad = (n: number) => String(n).padStart(2, '0');
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (d.toDateString() === today.toDateString()) {
    return `${time}:${pad(d.getSeconds())}`;
  }
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** An RFC 3339 / ISO time (as the API's events carry) as unix seconds; null when it does not parse. */
export function parseTime(text: string | null | undefined): number | null {
  if (!text) {
    return null;
  }
  const t = Date.parse(text);
  return Number.isFinite(t) ? t / 1000 : null;
}

/** A count with its noun: plural(1, "session") → "1 session", plural(3, "session") → "3 sessions". */
export function plural(n: number, noun: string, many: string = noun + 's'): string {
  return `${n} ${n === 1 ? noun : many}`;
}

/** Text cut to `max` characters with an ellipsis. */
export function truncate(text: string | null | undefined, max: number): string {
  const s = text ?? '';
  return s.length <= max ? s : s.slice(0, Math.max(0, max - 1)) + '…';
}

/** A short id for tables: "sesn_01AbCdEf…" keeps the prefix and the first `keep` characters after it. */
export function shortId(id: string | null | undefined, keep = 8): string {
  if (!id) {
    return '–';
  }
  const m = id.match(/^([a-z]+_)(.*)$/);
  if (!m) {
    return truncate(id, keep + 1);
  }
  return m[2].length <= keep ? id : `${m[1]}${m[2].slice(0, keep)}…`;
}

/** The message of anything thrown (ApiError, Error, string). */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) {
    return error.message;
  }
  return typeof error === 'string' ? error : JSON.stringify(error);
}
