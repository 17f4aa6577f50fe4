import type { RunContext } from '../lib/context.js'
import type { ScenarioResult } from '../lib/report.js'
export async function storm (_ctx: RunContext): Promise<ScenarioResult> { throw new Error('not yet') }
