/**
 * The Webhooks view's logic, kept free of the DOM so it is unit-tested without a browser: received deliveries
 * (GET webhooks) as rows, pages merged newest first, and what the summary line says.
 */

/** A delivery of GET webhooks, as the view shows it. */
export interface DeliveryRow {
  /** the store's sequence number: unique, increasing; the paging cursor */
  seq: number;
  webhook_id: string;
  received_at: number | null;
  event_type: string;
  object_id: string | null;
  /** "accepted": the server stores a delivery only after its signature was verified (rejected ones are counted) */
  verdict: string;
  /** the delivery's body as the REST API returned it (null when it did not) */
  body: unknown;
}

/** A delivery of the API → a row. */
export function deliveryRow(d: any): DeliveryRow {
  return {
    seq: Number(d?.seq ?? 0),
    webhook_id: String(d?.webhook_id ?? ''),
    received_at: typeof d?.received_at === 'number' ? d.received_at : null,
    event_type: String(d?.event_type ?? 'unknown'),
    object_id: d?.object_id == null ? null : String(d.object_id),
    verdict: typeof d?.verdict === 'string' ? d.verdict : 'accepted',
    body: d?.body ?? null
  };
}

/** Rows merged by seq (a page fetched again replaces its rows), newest first. */
export function mergeDeliveries(existing: readonly DeliveryRow[], incoming: readonly DeliveryRow[]): DeliveryRow[] {
  const bySeq = new Map<number, DeliveryRow>();
  for (const row of [...existing, ...incoming]) {
    bySeq.set(row.seq, row);
  }
  return [...bySeq.values()].sort((a, b) => b.seq - a.seq);
}

/** One page of GET webhooks → its rows and the cursor of the next (null: no more). */
export function deliveryPage(answer: any, limit: number): { rows: DeliveryRow[]; next: number | null } {
  const rows = (Array.isArray(answer?.data) ? answer.data : []).map(deliveryRow);
  const next = typeof answer?.next_before === 'number' && rows.length >= limit ? answer.next_before : null;
  return { rows, next };
}

/** The body of a delivery as text to show, or null when the API returned none. */
export function bodyText(body: unknown): string | null {
  if (body === null || body === undefined) {
    return null;
  }
  return JSON.stringify(body, null, 2);
}

/** The status's webhook counters as one line: "mode webhook · accepted 3 · duplicates 0 · rejected 1". */
export function countersLine(status: any): string {
  const w = status?.webhooks ?? {};
  const mode = status?.mode ? `mode ${status.mode}` : '';
  const parts = [mode, `accepted ${w.accepted ?? 0}`, `duplicates ${w.duplicates ?? 0}`, `rejected ${w.rejected ?? 0}`].filter(Boolean);
  return `${parts.join(' · ')} (since the server started)`;
}
